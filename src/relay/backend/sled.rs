//! The embedded backend: [`RelayStore`] (records over a local [`crate::store::Store`] with
//! group commit, see [`super::super::store`]) behind [`RelayBackend`]. Pure delegation: its
//! behaviour is exactly that of [`RelayStore`].

use super::{BoxFut, Page, RelayBackend};
use crate::identity::IdentityKey;
use crate::relay::store::{NewMessage, RelayStore, StoreCallback};
use crate::time::Timestamp;
use crate::wire::relay::{DeliveryConfirmation, RetrieveCursor};
use std::future::Future;
use std::pin::Pin;

impl RelayBackend for RelayStore {
    fn kind(&self) -> &'static str {
        "sled"
    }

    fn store_then(
        &self,
        m: NewMessage,
        then: StoreCallback,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(RelayStore::store_then(self, m, then))
    }

    fn confirm(
        &self,
        delivered_to: IdentityKey,
        sender: IdentityKey,
        message_id: u64,
    ) -> BoxFut<'_, bool> {
        Box::pin(RelayStore::confirm(self, delivered_to, sender, message_id))
    }

    fn confirm_keeping(
        &self,
        delivered_to: IdentityKey,
        sender: IdentityKey,
        message_id: u64,
        keep: DeliveryConfirmation,
    ) -> BoxFut<'_, bool> {
        Box::pin(RelayStore::confirm_keeping(
            self,
            delivered_to,
            sender,
            message_id,
            keep,
        ))
    }

    fn keep_confirmation(&self, c: DeliveryConfirmation) -> BoxFut<'_, ()> {
        Box::pin(RelayStore::keep_confirmation(self, c))
    }

    fn ack_confirmation(
        &self,
        sender: IdentityKey,
        delivered_to: [u8; 32],
        message_id: u64,
    ) -> BoxFut<'_, ()> {
        Box::pin(async move {
            RelayStore::ack_confirmation(self, &sender, &delivered_to, message_id).await
        })
    }

    fn expire(&self, cutoff: Timestamp) -> BoxFut<'_, u64> {
        Box::pin(RelayStore::expire(self, cutoff))
    }

    fn flush(&self) -> BoxFut<'_, ()> {
        Box::pin(RelayStore::flush(self))
    }

    fn retrieve(
        &self,
        recipient: IdentityKey,
        since: Option<Timestamp>,
        after: Option<RetrieveCursor>,
        limit: usize,
    ) -> BoxFut<'_, Page> {
        Box::pin(RelayStore::retrieve(self, recipient, since, after, limit))
    }

    fn kept_confirmations(
        &self,
        sender: IdentityKey,
        limit: usize,
    ) -> BoxFut<'_, Vec<DeliveryConfirmation>> {
        Box::pin(RelayStore::kept_confirmations(self, sender, limit))
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(RelayStore::close(self))
    }
}
