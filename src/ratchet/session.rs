//! One Double Ratchet session between two identities.
//!
//! A session is created by [`establish`](super::establish): the initiator starts with a
//! sending chain (its first ratchet key, chain key from the first-contact seed) and the
//! responder with the matching receiving chain. From then on:
//! - **encrypt**: if there is no sending chain (we received a new ratchet key since we last
//!   sent), generate a fresh ratchet key pair and do a DH-ratchet step with the peer's
//!   current ratchet key; then take the next message key of the sending chain.
//! - **decrypt**: a message in the current receiving chain (possibly ahead: skipped keys are
//!   stored), a message whose key was skipped earlier, or a message with a new peer ratchet
//!   key (skip the rest of the current receiving chain up to `pn`, DH-ratchet step with our
//!   current ratchet secret, drop the sending chain so the next send steps again).
//!
//! Every decryption computes the new state on copies and assigns it only after the AEAD
//! accepted the ciphertext; on any error the session is unchanged.
//!
//! AEAD associated data: `version(1 byte) || sender identity key || recipient identity key ||
//! encoded header`.

use super::chain_key::ChainKey;
use super::header::{Header, InitialHeader};
use super::receiver_chain::{skip_until, ReceiverChain, SkippedKeys};
use super::root_key::{RootKey, StepError};
use super::{DecryptError, EncryptError, MAX_MESSAGE_GAP, MAX_OLD_RATCHET_KEYS, PROTOCOL_VERSION};
use rand_core::CryptoRngCore;
use std::collections::VecDeque;
use x25519_dalek::{PublicKey, StaticSecret};

/// Our current ratchet key pair and the chain it sends on.
#[derive(Clone)]
pub(crate) struct SendingChain {
    pub(crate) secret: StaticSecret,
    pub(crate) public: [u8; 32],
    pub(crate) chain: ChainKey,
}

/// An encrypted but unsigned ratchet message: the encoded header and the AEAD ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatchetMessage {
    /// Encoded [`Header`].
    pub header: Vec<u8>,
    /// Ciphertext (plaintext length + 16).
    pub ciphertext: Vec<u8>,
}

/// A Double Ratchet session. Cloning copies secrets (all zeroized on drop).
#[derive(Clone)]
pub struct Session {
    pub(crate) id: [u8; 16],
    /// Initiator's creation time (ms since the epoch), from the first-contact header.
    pub(crate) created_at: u64,
    pub(crate) local_ik: [u8; 32],
    pub(crate) remote_ik: [u8; 32],
    /// We created this session (sent its first-contact message).
    pub(crate) initiator: bool,
    /// We have received at least one authenticated message in this session.
    pub(crate) confirmed: bool,
    pub(crate) root: RootKey,
    pub(crate) sending: Option<SendingChain>,
    pub(crate) receiving: Option<ReceiverChain>,
    /// Length of our previous sending chain (`pn` of the next chain).
    pub(crate) previous_counter: u32,
    pub(crate) skipped: SkippedKeys,
    pub(crate) old_ratchet_keys: VecDeque<[u8; 32]>,
    /// First-contact data attached to outgoing messages until the session is confirmed.
    pub(crate) initial: Option<InitialHeader>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &hex::encode(self.id))
            .field("created_at", &self.created_at)
            .field("initiator", &self.initiator)
            .field("confirmed", &self.confirmed)
            .field(
                "sending_index",
                &self.sending.as_ref().map(|s| s.chain.index()),
            )
            .field(
                "receiving_index",
                &self.receiving.as_ref().map(|r| r.chain.index()),
            )
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

fn associated_data(sender: &[u8; 32], recipient: &[u8; 32], header: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(1 + 64 + header.len());
    ad.push(PROTOCOL_VERSION);
    ad.extend_from_slice(sender);
    ad.extend_from_slice(recipient);
    ad.extend_from_slice(header);
    ad
}

impl Session {
    /// The initiator's state after writing the first-contact message.
    pub(crate) fn new_outbound(
        id: [u8; 16],
        local_ik: [u8; 32],
        remote_ik: [u8; 32],
        root: RootKey,
        sending: SendingChain,
        initial: InitialHeader,
    ) -> Self {
        Session {
            id,
            created_at: initial.created_at,
            local_ik,
            remote_ik,
            initiator: true,
            confirmed: false,
            root,
            sending: Some(sending),
            receiving: None,
            previous_counter: 0,
            skipped: SkippedKeys::default(),
            old_ratchet_keys: VecDeque::new(),
            initial: Some(initial),
        }
    }

    /// The responder's state after reading the first-contact message.
    pub(crate) fn new_inbound(
        id: [u8; 16],
        created_at: u64,
        local_ik: [u8; 32],
        remote_ik: [u8; 32],
        root: RootKey,
        receiving: ReceiverChain,
    ) -> Self {
        Session {
            id,
            created_at,
            local_ik,
            remote_ik,
            initiator: false,
            confirmed: true,
            root,
            sending: None,
            receiving: Some(receiving),
            previous_counter: 0,
            skipped: SkippedKeys::default(),
            old_ratchet_keys: VecDeque::new(),
            initial: None,
        }
    }

    /// The session id (first 16 bytes of the first-contact handshake hash).
    pub fn id(&self) -> &[u8; 16] {
        &self.id
    }

    /// When the initiator created the session (ms since the epoch, initiator's clock).
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// The order in which competing sessions with one peer are preferred (largest first):
    /// creation time, then session id. Both peers compute the same order.
    pub fn priority(&self) -> (u64, [u8; 16]) {
        (self.created_at, self.id)
    }

    /// Our identity key.
    pub fn local_identity(&self) -> &[u8; 32] {
        &self.local_ik
    }

    /// The peer's identity key.
    pub fn remote_identity(&self) -> &[u8; 32] {
        &self.remote_ik
    }

    /// True if we created the session.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// True once we received a message in this session (the peer holds it too).
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// Number of skipped message keys held.
    pub fn skipped_keys(&self) -> usize {
        self.skipped.len()
    }

    /// Encrypts `plaintext`, advancing the sending chain (and doing a DH-ratchet step first if
    /// we received a new peer ratchet key since we last sent). Unsigned: see
    /// [`seal::seal`](super::seal::seal) for the signed message.
    pub fn encrypt<R: CryptoRngCore + ?Sized>(
        &mut self,
        rng: &mut R,
        plaintext: &[u8],
    ) -> Result<RatchetMessage, EncryptError> {
        if plaintext.len() > super::payload::MAX_PAYLOAD_LEN {
            return Err(EncryptError::TooLarge {
                len: plaintext.len(),
                max: super::payload::MAX_PAYLOAD_LEN,
            });
        }
        let sending = match self.sending.take() {
            Some(s) => s,
            None => {
                let remote = self.receiving.as_ref().ok_or(EncryptError::NoChain)?;
                let secret = StaticSecret::random_from_rng(&mut *rng);
                let (root, chain) =
                    self.root
                        .advance(&secret, &remote.ratchet_key)
                        .map_err(|e| match e {
                            StepError::LowOrder => EncryptError::LowOrderKey,
                            StepError::Kdf => EncryptError::NoChain,
                        })?;
                self.root = root;
                let public = PublicKey::from(&secret).to_bytes();
                SendingChain {
                    secret,
                    public,
                    chain,
                }
            }
        };
        let sending = self.sending.insert(sending);
        let key = sending
            .chain
            .next_message_key()
            .map_err(|_| EncryptError::ChainExhausted)?;
        let header = Header {
            session_id: self.id,
            ratchet_key: sending.public,
            previous_counter: self.previous_counter,
            counter: key.index(),
            initial: if self.confirmed {
                None
            } else {
                self.initial.clone()
            },
        }
        .encode();
        let ad = associated_data(&self.local_ik, &self.remote_ik, &header);
        let ciphertext = key
            .encrypt(&ad, plaintext)
            .map_err(|_| EncryptError::NoChain)?;
        Ok(RatchetMessage { header, ciphertext })
    }

    /// Decrypts an unsigned ratchet message (decodes the header first).
    pub fn decrypt_message(&mut self, msg: &RatchetMessage) -> Result<Vec<u8>, DecryptError> {
        let header = Header::decode(&msg.header)?;
        self.decrypt(&header, &msg.header, &msg.ciphertext)
    }

    /// Decrypts `ciphertext` whose decoded header is `header` and encoded header `header_bytes`.
    /// The session changes only if this returns `Ok`.
    pub fn decrypt(
        &mut self,
        header: &Header,
        header_bytes: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, DecryptError> {
        if header.session_id != self.id {
            return Err(DecryptError::NoSession);
        }
        let ad = associated_data(&self.remote_ik, &self.local_ik, header_bytes);
        let rk = &header.ratchet_key;
        let n = header.counter;

        // 1. The current receiving chain, at or ahead of its next index.
        if let Some(recv) = self.receiving.as_mut() {
            if &recv.ratchet_key == rk && n >= recv.chain.index() {
                let gap = n - recv.chain.index();
                if gap > MAX_MESSAGE_GAP {
                    return Err(too_big(gap));
                }
                let mut chain = recv.chain.clone();
                let skipped = skip_until(&mut chain, rk, n).ok_or(DecryptError::Decrypt)?;
                let key = chain
                    .next_message_key()
                    .map_err(|_| DecryptError::Decrypt)?;
                let plaintext = key
                    .decrypt(&ad, ciphertext)
                    .map_err(|_| DecryptError::Decrypt)?;
                recv.chain = chain;
                self.skipped.extend(skipped);
                self.confirm();
                return Ok(plaintext);
            }
        }

        // 2. A key skipped earlier.
        if let Some(pos) = self.skipped.find(rk, n) {
            let key = self.skipped.get(pos).ok_or(DecryptError::Decrypt)?;
            let plaintext = key
                .decrypt(&ad, ciphertext)
                .map_err(|_| DecryptError::Decrypt)?;
            self.skipped.remove(pos);
            self.confirm();
            return Ok(plaintext);
        }

        // A chain we already had: its key was used or forgotten.
        let current = self
            .receiving
            .as_ref()
            .map(|r| &r.ratchet_key == rk)
            .unwrap_or(false);
        if current || self.old_ratchet_keys.contains(rk) {
            return Err(DecryptError::Replayed { index: n });
        }
        if self
            .sending
            .as_ref()
            .map(|s| &s.public == rk)
            .unwrap_or(false)
        {
            return Err(DecryptError::UnexpectedRatchetKey);
        }

        // 3. A new peer ratchet key: DH-ratchet step, all on copies.
        let sending = self
            .sending
            .as_ref()
            .ok_or(DecryptError::UnexpectedRatchetKey)?;
        let mut old_skipped = Vec::new();
        if let Some(recv) = self.receiving.as_ref() {
            let pn = header.previous_counter;
            if pn > recv.chain.index() {
                let gap = pn - recv.chain.index();
                if gap > MAX_MESSAGE_GAP {
                    return Err(too_big(gap));
                }
                let mut chain = recv.chain.clone();
                old_skipped =
                    skip_until(&mut chain, &recv.ratchet_key, pn).ok_or(DecryptError::Decrypt)?;
            }
        }
        if n > MAX_MESSAGE_GAP {
            return Err(too_big(n));
        }
        let (root, mut chain) = self
            .root
            .advance(&sending.secret, rk)
            .map_err(|e| match e {
                StepError::LowOrder => DecryptError::LowOrderKey,
                StepError::Kdf => DecryptError::Decrypt,
            })?;
        let new_skipped = skip_until(&mut chain, rk, n).ok_or(DecryptError::Decrypt)?;
        let key = chain
            .next_message_key()
            .map_err(|_| DecryptError::Decrypt)?;
        let plaintext = key
            .decrypt(&ad, ciphertext)
            .map_err(|_| DecryptError::Decrypt)?;

        // Commit.
        self.root = root;
        self.previous_counter = sending.chain.index();
        self.sending = None;
        if let Some(old) = self.receiving.replace(ReceiverChain::new(*rk, chain)) {
            self.old_ratchet_keys.push_back(old.ratchet_key);
            while self.old_ratchet_keys.len() > MAX_OLD_RATCHET_KEYS {
                self.old_ratchet_keys.pop_front();
            }
        }
        self.skipped.extend(old_skipped);
        self.skipped.extend(new_skipped);
        self.confirm();
        Ok(plaintext)
    }

    fn confirm(&mut self) {
        self.confirmed = true;
        self.initial = None;
    }
}

fn too_big(gap: u32) -> DecryptError {
    DecryptError::TooBigMessageGap {
        got: u64::from(gap),
        max: u64::from(MAX_MESSAGE_GAP),
    }
}

#[cfg(test)]
mod tests {
    use super::super::establish::{accept, initiate};
    use super::*;
    use crate::time::Timestamp;
    use rand_core::OsRng;

    fn pair() -> (Session, Session) {
        let b_noise = [4u8; 32];
        let b_pub = PublicKey::from(&StaticSecret::from(b_noise)).to_bytes();
        let mut a = initiate(
            &mut OsRng,
            &[1; 32],
            &[3; 32],
            &[2; 32],
            &b_pub,
            Timestamp(0),
        )
        .unwrap();
        let m = a.encrypt(&mut OsRng, b"0").unwrap();
        let mut b = accept(
            &[2; 32],
            &b_noise,
            &[1; 32],
            &Header::decode(&m.header).unwrap(),
        )
        .unwrap()
        .session;
        b.decrypt_message(&m).unwrap();
        (a, b)
    }

    #[test]
    fn ping_pong_and_failed_decrypt_changes_nothing() {
        let (mut a, mut b) = pair();
        for i in 0..5u8 {
            let m = b.encrypt(&mut OsRng, &[i]).unwrap();
            assert_eq!(a.decrypt_message(&m).unwrap(), [i]);
            let mut bad = a.encrypt(&mut OsRng, &[i]).unwrap();
            let good = bad.clone();
            bad.ciphertext[0] ^= 1;
            let before = format!("{b:?}");
            assert_eq!(b.decrypt_message(&bad), Err(DecryptError::Decrypt));
            assert_eq!(before, format!("{b:?}"));
            assert_eq!(b.decrypt_message(&good).unwrap(), [i]);
        }
        assert!(a.is_confirmed() && b.is_confirmed());
        assert_eq!(a.skipped_keys() + b.skipped_keys(), 0);
    }

    #[test]
    fn header_for_another_session_is_refused() {
        let (mut a, mut b) = pair();
        let (mut c, _) = pair();
        let m = c.encrypt(&mut OsRng, b"x").unwrap();
        assert_eq!(b.decrypt_message(&m), Err(DecryptError::NoSession));
        let _ = a.encrypt(&mut OsRng, b"y").unwrap();
    }

    #[test]
    fn debug_prints_no_key_material() {
        let (a, _) = pair();
        let s = format!("{a:?}");
        assert!(s.contains("Session") && !s.contains("secret") && !s.contains("root"));
    }
}
