//! `sremp backup --relay` (the store of a stopped relay-only relay, opened and verified here)
//! and `sremp restore` (the node or relay must be stopped). `sremp backup` of a running node
//! goes through its control socket ([`super::control`]).

use super::CliError;
use crate::config::Config;
use std::path::Path;

/// `sremp backup --relay --out FILE --key KEYFILE`.
pub fn backup_relay(cfg: &Config, json: bool, out: &Path, key: &Path) -> Result<(), CliError> {
    // A stopped relay's store: opened (and verified) here; a running relay holds the lock.
    let dir = cfg.data_dir().join(crate::relay::DB_DIR);
    let store = crate::store::SledStore::open_checked(&dir)
        .map_err(|e| e.with_advice(crate::relay::RELAY_DAMAGE_ADVICE))?;
    let (_, created) = crate::backup::BackupKey::load_or_create(key)?;
    let s = crate::backup::write_backup(&store, out, key)?;
    crate::store::Store::close(&store)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "out": s.out,
                "records": s.records,
                "bytes": s.bytes,
                "key": key.display().to_string(),
                "key_created": created,
            })
        );
    } else {
        if created {
            println!(
                "created key file {} (keep it safe and apart from the backup)",
                key.display()
            );
        }
        println!(
            "backup written: {} ({} records, {} bytes)",
            s.out, s.records, s.bytes
        );
    }
    Ok(())
}

/// `sremp restore FILE --key KEYFILE [--force] [--relay]`.
pub fn restore(
    cfg: &Config,
    json: bool,
    file: &Path,
    key: &Path,
    force: bool,
    relay: bool,
) -> Result<(), CliError> {
    let dir = cfg.data_dir().join(if relay {
        crate::relay::DB_DIR
    } else {
        crate::node::DB_DIR
    });
    let r = crate::backup::restore_backup(&dir, file, key, force)?;
    let aside = r.moved_aside.map(|p| p.display().to_string());
    if json {
        println!(
            "{}",
            serde_json::json!({
                "records": r.records,
                "db": dir.display().to_string(),
                "moved_aside": aside,
            })
        );
    } else {
        println!("restored {} records into {}", r.records, dir.display());
        if let Some(a) = aside {
            println!("the previous store was moved to {a}");
        }
    }
    Ok(())
}
