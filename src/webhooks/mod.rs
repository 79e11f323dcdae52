//! Webhooks: every key event reaches the provider's systems as a signed
//! HTTP POST (Standard Webhooks), at least once, in order per key.
//!
//! The path of an event: a key change writes its audit event into the
//! outbox in the change's own transaction (`store/webhooks.rs`); events
//! scopegate derives (an expiry coming or come, a rate limit or the credits
//! hit) are put there once per id, whichever sidecar notices. The deliverer
//! (`deliver.rs`; in a fleet only on the sidecar holding the delivery lease
//! in etcd) fans each outbox event out to its account's endpoints that want
//! its type, as pending deliveries, in one write; then sends each key's
//! oldest pending delivery, signed, and removes it once a 2xx answers.
//! A failure waits (exponential backoff with jitter, capped) and is tried
//! again until `retry_for` has passed since its first attempt; then it is a
//! dead letter, listed and redeliverable. Decisions never wait on any of it:
//! a denial only offers a signal to a bounded queue (`signals.rs`).

mod deliver;
pub mod event;
pub mod guard;
pub mod record;
mod send;
pub mod sign;
mod signals;

use std::sync::Arc;
use std::time::Duration;

pub use signals::Signals;

use crate::store::Store;

/// How webhooks are delivered (the `--webhook-*` flags).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Endpoints may be on loopback, link-local or private addresses.
    pub allow_private: bool,
    /// One attempt gives up after this (connect, send, headers).
    pub timeout: Duration,
    /// A delivery is retried this long after its first attempt, then dead.
    pub retry_for: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// `key.expiring` is sent this long before a key expires.
    pub expiring_before: Duration,
    /// How often the deliverer looks for work (and the expiry scan's unit).
    pub tick: Duration,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(3600);
pub const DEFAULT_EXPIRING_DAYS: u64 = 7;
/// The most endpoints one account may have.
pub const MAX_ENDPOINTS_PER_ACCOUNT: usize = 10;

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            allow_private: false,
            timeout: DEFAULT_TIMEOUT,
            retry_for: DEFAULT_RETRY_FOR,
            max_backoff: DEFAULT_MAX_BACKOFF,
            expiring_before: Duration::from_secs(DEFAULT_EXPIRING_DAYS * 86_400),
            tick: Duration::from_millis(250),
        }
    }
}

/// The webhook service of one sidecar.
pub struct Webhooks {
    store: Store,
    pub settings: WebhookSettings,
    sender: send::Sender,
    /// Who holds the delivery lease, as etcd shows it.
    holder: String,
    signals: Arc<Signals>,
    /// Expiry events this sidecar has queued (their once-ids).
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Webhooks {
    /// Turns on the store's outbox; nothing runs until [`Webhooks::start`].
    pub fn new(store: Store, settings: WebhookSettings) -> Arc<Webhooks> {
        store.set_outbox(true);
        let mut nonce = [0u8; 4];
        let _ = getrandom::fill(&mut nonce);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "sidecar".into());
        Arc::new(Webhooks {
            sender: send::Sender::new(settings.allow_private, settings.timeout),
            holder: format!("{host}/{}/{}", std::process::id(), hex::encode(nonce)),
            signals: Arc::new(Signals::new()),
            seen: Default::default(),
            store,
            settings,
        })
    }

    /// What decisions offer their events to.
    pub fn signals(&self) -> Arc<Signals> {
        self.signals.clone()
    }

    /// Starts the deliverer and the signal queue's consumer.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(deliver::run(self.clone()));
        tokio::spawn(signals::run(self.clone()));
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// A fresh random id with `prefix` (`wh_`, `msg_`).
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("{prefix}{}", hex::encode(bytes))
}
