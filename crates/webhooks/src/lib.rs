//! # kickstand-webhooks
//!
//! Webhook subscriptions to fleet events: receivers subscribe (`/api/v1/webhooks`) with a URL
//! and optional kind and zone filters; every matching event is POSTed to them as signed JSON,
//! at least once, in order per subscription, retried with exponential backoff and full jitter,
//! and every attempt is logged with its status code. A subscription whose receiver keeps
//! failing is disabled automatically. A slow or dead receiver never slows the pipeline: the
//! dispatcher only *reads* the event feed, and falls behind on its own.
//!
//! # Layout
//!
//! - [`signing`]: `sign` / `verify` (HMAC-SHA256 over `"{timestamp}.{body}"`). No I/O; reused
//!   by the ops messenger.
//! - [`retry`]: [`RetryPolicy`] (backoff caps and full-jitter delays) and [`Jitter`], a seedable
//!   random source. No I/O, no clock; reused by the ops messenger.
//! - [`config`]: [`WebhookConfig`], the `[webhooks]` settings.
//! - [`store`]: the port [`WebhookStore`] (a synchronous trait): the subscriptions, their
//!   retry state, the delivery log, and whether this process's dispatcher leads. The rules of
//!   what an attempt changes live there, once, for every implementation.
//!   - [`store::sqlite`]: [`SqliteWebhookStore`], one SQLite file (WAL, `PRAGMA user_version`
//!     migrations); always leads. The single-process mode (`kickstand run`).
//!   - `store::postgres` (cargo feature `postgres`, on by default): `PgWebhookStore`, tables
//!     `webhook_*` in a PostgreSQL schema shared by every API process of the scale-out mode
//!     (`kickstand serve`); versioned migrations; leadership is a session advisory lock held on
//!     a connection of its own.
//! - [`send`]: [`Sender`], one signed POST and its result; URL and address checks.
//! - [`dispatch`]: [`Dispatcher`], the task that reads an [`EventFeed`] and delivers while its
//!   store says it leads; the delivery body ([`dispatch::event_body`]) and metric names.
//! - [`api`]: the HTTP handlers, an `OpenApiRouter<S>` for any state holding an
//!   `Arc<WebhookService>`, errors as problem+json.
//!
//! # Wiring
//!
//! ```text
//! // One process (`kickstand run`):
//! let store: Arc<dyn WebhookStore> = Arc::new(SqliteWebhookStore::open(data_dir.join("webhooks.db"))?);
//! // Or several processes sharing the subscriptions (`kickstand serve`), each opening:
//! let store: Arc<dyn WebhookStore> = Arc::new(PgWebhookStore::open(&url, &schema, tls)?);
//!
//! let sender = Sender::new(&config)?;
//! let (handle, task) = Dispatcher::spawn(store.clone(), feed.clone(), sender.clone(), &config, shutdown);
//! let service = Arc::new(WebhookService { store, feed, sender, config, dispatcher: Some(handle) });
//! let routes = kickstand_webhooks::api::router::<AppState>(); // AppState: FromRef -> Arc<WebhookService>
//! ```
//! Every process may spawn a dispatcher: with PostgreSQL one of them leads and delivers, the
//! others stand by and take over (within `leader_retry_ms`) when it stops or loses its database
//! session; the gauge `kickstand_webhooks_leader` says which. `PgWebhookStore::open` takes a
//! `rustls::ClientConfig` for TLS (refused: `sslmode=require` without one) and must be called
//! outside an async task (it owns a runtime and blocks on it), like every store method.
//! `handle.notify()` skips the poll delay (creating or re-enabling a subscription calls it;
//! new events are found by the poll, every `poll_interval_ms`).
//!
//! # A delivery
//!
//! `POST <url>` with the body
//! `{"id": "<event id>", "type": "<kind>", "created_at": "<RFC 3339 of the event>", "data": <the Event>}`
//! and the headers `Content-Type: application/json`, `User-Agent: kickstand-webhooks/<version>`,
//! `Webhook-Id: <event id>` (the same on every attempt), `Webhook-Timestamp: <unix seconds of
//! this attempt>` and `Webhook-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
//! A 2xx answer within `timeout_ms` is a delivery; anything else (another status, a redirect,
//! a connection error, a timeout) is a failed attempt. `POST /api/v1/webhooks/{id}/test` sends
//! a `{"type": "ping"}` delivery the same way.
//!
//! **Verifying (receivers).** Take the raw body bytes, compute
//! `hex(HMAC-SHA256(key = secret, "{Webhook-Timestamp}.{body}"))`, compare it in constant time
//! with each `v1=` entry of `Webhook-Signature` (comma-separated), and refuse timestamps more
//! than 5 minutes from your clock (replays). Then dedupe on `Webhook-Id`: delivery is
//! at-least-once. [`signing::verify`] does all but the dedupe. This is Stripe's scheme with the
//! Standard Webhooks header names.
//!
//! # Retries, ordering, disabling
//!
//! After failed attempt `n` the next one waits a uniform random time in
//! `[0, min(max_delay, base · factor^(n-1))]` (defaults: 1 s, ×2, 1 h). After `max_attempts`
//! (8) the event is logged `gave_up` and the subscription moves on; a `410 Gone` answer gives
//! up at once and disables the subscription. While a subscription waits for a retry its later
//! events wait too (order per subscription), but other subscriptions do not: a waiting
//! subscription holds no delivery slot, and at most `max_in_flight` requests run at once.
//! A subscription is disabled (`disabled_reason` says why) after `disable_after_failures`
//! events in a row were given up, or once it has failed for `disable_after_secs` without a
//! delivery. Its cursor stays, so `PATCH {"enabled": true}` resumes where it stopped.
//!
//! **Architecture Invariant:** the cursor of a subscription moves past an event only in the
//! transaction that logs it `delivered` or `gave_up` (see [`store`]); a restart re-sends at
//! most the event that was in flight. New subscriptions start at the feed's head: they get no
//! older events.
//!
//! **Architecture Invariant:** nothing here writes to the event feed or waits on the pipeline.
//!
//! **Architecture Invariant:** at most one dispatcher delivers from a store at a time (in
//! steady state; see [`dispatch`] for the moment of a takeover), so a receiver gets each event
//! once per subscription however many processes serve the API.
//!
//! # Targets
//!
//! `allow_private_targets` is on by default: a self-hosted operator often points webhooks at
//! internal hosts, and whoever can create subscriptions already holds an API key with write
//! scope. Turn it off when that is not enough: literal private addresses are then refused at
//! creation and every resolved address is checked at each connection.

pub mod api;
pub mod config;
pub mod dispatch;
pub mod retry;
pub mod send;
pub mod signing;
pub mod store;

pub use api::WebhookService;
pub use config::WebhookConfig;
pub use dispatch::{Dispatcher, DispatcherHandle, EventFeed};
pub use retry::{Jitter, RetryPolicy};
pub use send::Sender;
pub use signing::{sign, verify};
#[cfg(feature = "postgres")]
pub use store::PgWebhookStore;
pub use store::{SqliteWebhookStore, StoreError, Subscription, WebhookStore};
