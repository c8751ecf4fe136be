//! Contact cards: a signed identity plus where to reach it, as one line of text.
//!
//! Text form (**[gap]**): `sremp1:` followed by the unpadded base64url encoding of the
//! MessagePack `[identity, [endpoint...], [relay_hint...]]`. The identity inside is verified
//! when the card is parsed.

use super::{Identity, IdentityError};
use crate::wire::rendezvous::RelayHint;
use crate::wire::{msgpack, Endpoint};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Prefix of the text form.
pub const CARD_PREFIX: &str = "sremp1:";
/// Longest card text accepted.
pub const MAX_CARD_TEXT: usize = 64 * 1024;
/// Most endpoints or relays on one card.
pub const MAX_CARD_ENTRIES: usize = 8;

/// A shareable contact card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactCard {
    /// The signed identity.
    pub identity: Identity,
    /// Where the node accepts direct Noise connections.
    pub endpoints: Vec<Endpoint>,
    /// Relays that store messages for this identity.
    pub relays: Vec<RelayHint>,
}

impl ContactCard {
    /// The one-line text form.
    pub fn to_text(&self) -> String {
        let bytes = msgpack::encode(self);
        format!(
            "{CARD_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    }

    /// Parses and verifies the text form.
    pub fn from_text(text: &str) -> Result<Self, IdentityError> {
        let text = text.trim();
        if text.len() > MAX_CARD_TEXT {
            return Err(IdentityError::Invalid("contact card too long"));
        }
        let body = text
            .strip_prefix(CARD_PREFIX)
            .ok_or(IdentityError::Invalid("a contact card starts with sremp1:"))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| IdentityError::Invalid("contact card is not valid base64url"))?;
        let card: ContactCard = msgpack::decode(&bytes)?;
        if card.endpoints.len() > MAX_CARD_ENTRIES || card.relays.len() > MAX_CARD_ENTRIES {
            return Err(IdentityError::Invalid(
                "too many endpoints or relays on the card",
            ));
        }
        Ok(card)
    }

    /// The card as a QR code drawn with Unicode half blocks, for a terminal.
    pub fn to_qr(&self) -> Result<String, IdentityError> {
        let code = qrcode::QrCode::with_error_correction_level(self.to_text(), qrcode::EcLevel::L)
            .map_err(|_| IdentityError::Invalid("contact card too large for a QR code"))?;
        Ok(code
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Flags, UserIdentity};
    use crate::time::Timestamp;

    #[test]
    fn card_round_trip_and_rejects_garbage() {
        let u = UserIdentity::generate(
            "carol",
            Flags::default(),
            Timestamp(1),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let card = ContactCard {
            identity: u.identity().clone(),
            endpoints: vec!["127.0.0.1:4000".parse().unwrap()],
            relays: vec![],
        };
        let text = card.to_text();
        assert!(text.starts_with("sremp1:"));
        assert_eq!(ContactCard::from_text(&text).unwrap(), card);
        assert!(ContactCard::from_text("sremp1:!!!").is_err());
        assert!(ContactCard::from_text("hello").is_err());
        let mut broken = text.clone();
        broken.pop();
        broken.push('A');
        let _ = ContactCard::from_text(&broken);
        assert!(card.to_qr().unwrap().lines().count() > 10);
    }
}
