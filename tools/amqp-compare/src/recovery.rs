//! The `recovery` mode: what each client does when its connection is lost, and what the
//! application must write to carry on.
//!
//! The broker is shared and must not be restarted, so a restart is imitated from the client's
//! side. The client connects through an in-process TCP proxy. An outage then:
//!
//! 1. closes the proxy's listening socket, so reconnection attempts are refused (as while a
//!    broker restarts);
//! 2. ends the client's current connection, in one of two ways:
//!    - **forced close**: `rabbitmqctl close_connection` on *our* connection only, so the broker
//!      sends `connection.close` 320 CONNECTION_FORCED, exactly what a broker shutting down sends;
//!    - **TCP drop**: the proxy drops both sockets without any AMQP goodbye (a crash or a network
//!      failure);
//! 3. after [`OUTAGE`], opens the listening socket again on the same port.
//!
//! During the scenario a publisher sends one persistent, confirmed message every
//! [`PUBLISH_EVERY`] to a durable queue, and a consumer on the same connection acks what it
//! receives. The report says whether publishing and consuming resumed, how long after the proxy
//! came back, and whether any confirmed message was never delivered.
//!
//! lapin is used with `enable_auto_recover()` and `Channel::wait_for_recovery`, as its README
//! shows. amqprs has no recovery, so the scenario contains the reconnect loop an application
//! would write: watch `Connection::listen_network_io_failure`, then reconnect, re-declare and
//! re-consume.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, broadcast};
use tokio::task::JoinHandle;

use crate::client::Broker;

/// How long the proxy refuses connections after the outage begins.
const OUTAGE: Duration = Duration::from_secs(3);
/// When the outage begins, after the start of the scenario.
const OUTAGE_AT: Duration = Duration::from_secs(1);
/// How long the whole scenario runs.
const SCENARIO: Duration = Duration::from_secs(14);
/// The publishing interval.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// A publish whose confirm has not arrived after this long counts as failed.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// How the current connection is ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outage {
    /// The broker sends connection.close 320 CONNECTION_FORCED (via rabbitmqctl).
    ForcedClose,
    /// The proxy drops the TCP connection without an AMQP close.
    TcpDrop,
}

impl Outage {
    fn label(self) -> &'static str {
        match self {
            Outage::ForcedClose => "forced close (320 CONNECTION_FORCED), then 3 s refused",
            Outage::TcpDrop => "TCP drop, then 3 s refused",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// proxy

/// A loopback TCP proxy in front of the broker whose listener can be closed and reopened on the
/// same port, and whose live connections can be dropped.
struct Proxy {
    /// The port clients connect to.
    port: u16,
    /// The broker's address.
    upstream: SocketAddr,
    /// The accept loop while the proxy is up.
    acceptor: Mutex<Option<JoinHandle<()>>>,
    /// Tells every forwarding task to drop its sockets.
    kill: broadcast::Sender<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Result<Arc<Proxy>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (kill, _) = broadcast::channel(4);
        let proxy = Arc::new(Proxy {
            port,
            upstream,
            acceptor: Mutex::new(None),
            kill,
        });
        proxy.serve(listener);
        Ok(proxy)
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream;
        let kill = self.kill.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut kill_rx = kill.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = kill_rx.recv() => {}
                    }
                });
            }
        });
        *self.acceptor.lock().expect("proxy lock") = Some(task);
    }

    /// Closes the listening socket: new connections are refused.
    async fn down(&self) {
        let task = self.acceptor.lock().expect("proxy lock").take();
        if let Some(task) = task {
            task.abort();
            // Wait until the listener is really dropped, so the port is closed.
            let _ = task.await;
        }
    }

    /// Reopens the listening socket on the same port.
    async fn up(&self) -> Result<()> {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .context("re-binding the proxy port")?;
        self.serve(listener);
        Ok(())
    }

    /// Drops every proxied connection without any goodbye.
    fn drop_connections(&self) {
        let _ = self.kill.send(());
    }
}

/// Asks the broker to close the connection whose client-provided name is `name`.
async fn force_close(name: &str) -> Result<()> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "--no-table-headers",
            "--silent",
        ])
        .output()
        .await
        .context("running rabbitmqctl list_connections")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    let pids: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split('\t').next())
        .collect();
    if pids.is_empty() {
        bail!("no broker connection named {name}");
    }
    for pid in pids {
        let status = tokio::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "amqp-compare recovery test"])
            .output()
            .await?
            .status;
        if !status.success() {
            bail!("rabbitmqctl close_connection {pid} failed");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// what a scenario observed

/// Everything a scenario records, shared between its tasks.
#[derive(Default)]
struct Log {
    /// Sequence numbers whose publish was confirmed (ack).
    confirmed: BTreeSet<u64>,
    /// Sequence numbers delivered to the consumer (duplicates counted separately).
    consumed: BTreeSet<u64>,
    /// Deliveries of a sequence number already delivered.
    redelivered: u64,
    /// Time of the first confirm after the proxy came back.
    first_confirm_after: Option<Instant>,
    /// Time of the first delivery of a message published after the proxy came back.
    first_delivery_after: Option<Instant>,
    /// Errors and events, in order, with their time.
    events: Vec<(Instant, String)>,
}

/// The shared log plus the moment the proxy came back (set once).
struct Observer {
    log: Mutex<Log>,
    /// Sequence numbers published after the proxy came back start here (0 = not yet back).
    back_seq: Mutex<u64>,
    /// When the proxy came back.
    back_at: Mutex<Option<Instant>>,
}

impl Observer {
    fn new() -> Arc<Observer> {
        Arc::new(Observer {
            log: Mutex::new(Log::default()),
            back_seq: Mutex::new(0),
            back_at: Mutex::new(None),
        })
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().expect("log lock")
    }

    fn event(&self, what: impl Into<String>) {
        self.log().events.push((Instant::now(), what.into()));
    }

    fn is_after_outage(&self, seq: u64) -> bool {
        let back = *self.back_seq.lock().expect("lock");
        back != 0 && seq >= back
    }

    fn confirmed(&self, seq: u64) {
        let after = self.is_after_outage(seq);
        let mut log = self.log();
        log.confirmed.insert(seq);
        if after && log.first_confirm_after.is_none() {
            log.first_confirm_after = Some(Instant::now());
        }
    }

    fn consumed(&self, body: &[u8]) {
        let Some(seq) = std::str::from_utf8(body).ok().and_then(|s| s.parse().ok()) else {
            self.event("consumer: unparsable body");
            return;
        };
        let after = self.is_after_outage(seq);
        let mut log = self.log();
        if !log.consumed.insert(seq) {
            log.redelivered += 1;
        }
        if after && log.first_delivery_after.is_none() {
            log.first_delivery_after = Some(Instant::now());
        }
    }
}

/// Runs the outage timeline next to a scenario: down at [`OUTAGE_AT`], up [`OUTAGE`] later.
async fn outage_timeline(
    proxy: Arc<Proxy>,
    outage: Outage,
    connection_name: String,
    next_seq: Arc<std::sync::atomic::AtomicU64>,
    obs: Arc<Observer>,
) -> Result<()> {
    tokio::time::sleep(OUTAGE_AT).await;
    proxy.down().await;
    match outage {
        Outage::ForcedClose => {
            force_close(&connection_name).await?;
            obs.event("outage: broker closed the connection (320)");
        }
        Outage::TcpDrop => {
            proxy.drop_connections();
            obs.event("outage: TCP connection dropped");
        }
    }
    tokio::time::sleep(OUTAGE).await;
    *obs.back_seq.lock().expect("lock") = next_seq.load(Ordering::SeqCst).max(1);
    proxy.up().await?;
    *obs.back_at.lock().expect("lock") = Some(Instant::now());
    obs.event("proxy: accepting connections again");
    Ok(())
}

/// One row of the recovery report.
pub(crate) struct RecoveryRow {
    client: &'static str,
    outage: Outage,
    confirmed: usize,
    confirmed_after: usize,
    lost: usize,
    redelivered: u64,
    confirm_resumed: Option<Duration>,
    delivery_resumed: Option<Duration>,
    events: Vec<String>,
}

fn finish(client: &'static str, outage: Outage, obs: &Observer, start: Instant) -> RecoveryRow {
    let back_at = *obs.back_at.lock().expect("lock");
    let back_seq = *obs.back_seq.lock().expect("lock");
    let log = obs.log();
    let since_back = |t: Option<Instant>| match (t, back_at) {
        (Some(t), Some(b)) => Some(t.saturating_duration_since(b)),
        _ => None,
    };
    RecoveryRow {
        client,
        outage,
        confirmed: log.confirmed.len(),
        confirmed_after: log
            .confirmed
            .iter()
            .filter(|&&s| back_seq != 0 && s >= back_seq)
            .count(),
        lost: log.confirmed.difference(&log.consumed).count(),
        redelivered: log.redelivered,
        confirm_resumed: since_back(log.first_confirm_after),
        delivery_resumed: since_back(log.first_delivery_after),
        events: log
            .events
            .iter()
            .map(|(t, e)| format!("{:.2} s {e}", t.duration_since(start).as_secs_f64()))
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// lapin: automatic recovery

mod lapin_side {
    use super::*;
    use futures_util::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    };
    use lapin::types::{FieldTable, LongString, ShortString};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    pub(super) async fn scenario(
        broker: &Broker,
        proxy: Arc<Proxy>,
        outage: Outage,
        queue: &str,
    ) -> Result<RecoveryRow> {
        let name = format!("amqpcmp-{}-lapin-recovery", std::process::id());
        let uri = format!(
            "amqp://{}:{}@127.0.0.1:{}/%2f",
            broker.user, broker.password, proxy.port
        );
        let props = ConnectionProperties::default()
            .enable_auto_recover()
            .with_connection_name(LongString::from(name.as_str()));
        let conn = Connection::connect(&uri, props).await?;
        let obs = Observer::new();
        let start = Instant::now();

        // Connection-level events (errors, reconnections) as lapin reports them.
        let mut events = conn.events_listener();
        let ev_obs = Arc::clone(&obs);
        let event_task = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                ev_obs.event(format!("lapin event: {event:?}"));
            }
        });

        let publisher = conn.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        publisher
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        let consumer_channel = conn.create_channel().await?;
        consumer_channel
            .basic_qos(64, BasicQosOptions::default())
            .await?;
        let mut consumer = consumer_channel
            .basic_consume(
                queue.into(),
                "amqpcmp-recovery".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let c_obs = Arc::clone(&obs);
        let consumer_task = tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                match delivery {
                    Ok(d) => {
                        c_obs.consumed(&d.data);
                        if let Err(e) = d.ack(BasicAckOptions::default()).await {
                            c_obs.event(format!("consumer: ack failed: {e}"));
                        }
                    }
                    Err(e) => {
                        c_obs.event(format!("consumer: stream error: {e}"));
                        match consumer_channel.wait_for_recovery(e).await {
                            Ok(()) => c_obs.event("consumer: wait_for_recovery returned Ok"),
                            Err(e) => {
                                c_obs.event(format!("consumer: not recoverable: {e}"));
                                break;
                            }
                        }
                    }
                }
            }
            c_obs.event("consumer: stream ended");
        });

        let next_seq = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let timeline = tokio::spawn(outage_timeline(
            Arc::clone(&proxy),
            outage,
            name.clone(),
            Arc::clone(&next_seq),
            Arc::clone(&obs),
        ));

        let props = BasicProperties::default().with_delivery_mode(2);
        let mut gave_up = false;
        while start.elapsed() < SCENARIO {
            let seq = next_seq.fetch_add(1, Ordering::SeqCst);
            let body = seq.to_string();
            let attempt = async {
                publisher
                    .basic_publish(
                        ShortString::from(""),
                        queue.into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        props.clone(),
                    )
                    .await?
                    .await
            };
            match tokio::time::timeout(CONFIRM_TIMEOUT, attempt).await {
                Ok(Ok(confirmation)) if confirmation.is_ack() => obs.confirmed(seq),
                Ok(Ok(_)) => obs.event(format!("publisher: seq {seq} nacked")),
                Ok(Err(e)) => {
                    obs.event(format!("publisher: {e}"));
                    let left = SCENARIO.saturating_sub(start.elapsed());
                    match tokio::time::timeout(left, publisher.wait_for_recovery(e)).await {
                        Ok(Ok(())) => obs.event("publisher: wait_for_recovery returned Ok"),
                        Ok(Err(e)) => {
                            obs.event(format!("publisher: not recoverable: {e}"));
                            gave_up = true;
                            break;
                        }
                        Err(_) => obs.event("publisher: still waiting for recovery at the end"),
                    }
                }
                Err(_) => obs.event(format!("publisher: no confirm for seq {seq} in 2 s")),
            }
            tokio::time::sleep(PUBLISH_EVERY).await;
        }
        if gave_up {
            tokio::time::sleep(SCENARIO.saturating_sub(start.elapsed())).await;
        }
        timeline.await??;
        // Let the last deliveries arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let row = finish("lapin", outage, &obs, start);
        if conn.close(200, ShortString::from("OK")).await.is_err() {
            obs.event("close failed (connection already gone)");
        }
        consumer_task.abort();
        event_task.abort();
        Ok(row)
    }
}

// ---------------------------------------------------------------------------------------------
// amqprs: application-level reconnect

mod amqprs_side {
    use super::*;
    use amqprs::callbacks::{ConnectionCallback, DefaultChannelCallback};
    use amqprs::channel::{
        BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments,
        Channel, ConfirmSelectArguments, QueueDeclareArguments,
    };
    use amqprs::connection::{Connection, OpenConnectionArguments};
    use amqprs::{BasicProperties, Close, DELIVERY_MODE_PERSISTENT};
    use async_trait::async_trait;

    use crate::amqprs_client::{ConfirmCallback, ConfirmTracker};

    /// Records the broker's connection.close in the scenario log.
    struct RecordClose(Arc<Observer>);

    #[async_trait]
    impl ConnectionCallback for RecordClose {
        async fn close(
            &mut self,
            _: &Connection,
            close: Close,
        ) -> std::result::Result<(), amqprs::error::Error> {
            self.0.event(format!(
                "amqprs ConnectionCallback::close: {} {}",
                close.reply_code(),
                close.reply_text()
            ));
            Ok(())
        }
        async fn blocked(&mut self, _: &Connection, _: String) {}
        async fn unblocked(&mut self, _: &Connection) {}
        async fn secret_updated(&mut self, _: &Connection) {}
    }

    /// One connection's worth of state; rebuilt from scratch after every loss.
    struct Session {
        conn: Connection,
        publisher: Channel,
        /// Confirms for `publisher`; starts at zero permits, one per confirm.
        confirms: Arc<Semaphore>,
        tracker: Arc<ConfirmTracker>,
        /// Set when the connection is gone (network failure or broker close).
        lost: Arc<AtomicBool>,
        /// Signalled with `lost`.
        lost_notify: Arc<Notify>,
    }

    async fn open(
        broker: &Broker,
        port: u16,
        name: &str,
        queue: &str,
        obs: &Arc<Observer>,
    ) -> Result<Session> {
        let mut args =
            OpenConnectionArguments::new("127.0.0.1", port, &broker.user, &broker.password);
        args.connection_name(name);
        let conn = Connection::open(&args).await?;
        conn.register_callback(RecordClose(Arc::clone(obs))).await?;

        let publisher = conn.open_channel(None).await?;
        let confirms = Arc::new(Semaphore::new(0));
        let tracker = Arc::new(ConfirmTracker::new(Arc::clone(&confirms)));
        publisher
            .register_callback(ConfirmCallback(Arc::clone(&tracker)))
            .await?;
        publisher
            .confirm_select(ConfirmSelectArguments::default())
            .await?;
        publisher
            .queue_declare(QueueDeclareArguments::durable_client_named(queue))
            .await?;

        let consumer = conn.open_channel(None).await?;
        consumer.register_callback(DefaultChannelCallback).await?;
        consumer
            .basic_qos(BasicQosArguments::new(0, 64, false))
            .await?;
        let (_, mut rx) = consumer
            .basic_consume_rx(BasicConsumeArguments::new(queue, "amqpcmp-recovery"))
            .await?;
        let c_obs = Arc::clone(obs);
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                if let (Some(deliver), Some(body)) = (message.deliver, message.content) {
                    c_obs.consumed(&body);
                    let ack = BasicAckArguments::new(deliver.delivery_tag(), false);
                    if let Err(e) = consumer.basic_ack(ack).await {
                        c_obs.event(format!("consumer: ack failed: {e}"));
                    }
                }
            }
            c_obs.event("consumer: delivery stream ended");
        });

        let lost = Arc::new(AtomicBool::new(false));
        let lost_notify = Arc::new(Notify::new());
        let watcher = conn.clone();
        let (l, n, w_obs) = (Arc::clone(&lost), Arc::clone(&lost_notify), Arc::clone(obs));
        tokio::spawn(async move {
            let io_failure = watcher.listen_network_io_failure().await;
            w_obs.event(format!(
                "amqprs listen_network_io_failure returned {io_failure}"
            ));
            l.store(true, Ordering::SeqCst);
            n.notify_waiters();
        });
        Ok(Session {
            conn,
            publisher,
            confirms,
            tracker,
            lost,
            lost_notify,
        })
    }

    pub(super) async fn scenario(
        broker: &Broker,
        proxy: Arc<Proxy>,
        outage: Outage,
        queue: &str,
    ) -> Result<RecoveryRow> {
        let name = format!("amqpcmp-{}-amqprs-recovery", std::process::id());
        let obs = Observer::new();
        let start = Instant::now();
        let mut session = Some(open(broker, proxy.port, &name, queue, &obs).await?);

        let next_seq = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let timeline = tokio::spawn(outage_timeline(
            Arc::clone(&proxy),
            outage,
            name.clone(),
            Arc::clone(&next_seq),
            Arc::clone(&obs),
        ));
        let props = BasicProperties::default()
            .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
            .finish();

        while start.elapsed() < SCENARIO {
            let Some(s) = &session else {
                // The application's reconnect loop: retry every 250 ms.
                match open(broker, proxy.port, &name, queue, &obs).await {
                    Ok(s) => {
                        obs.event("app: reconnected, re-declared and re-consumed");
                        session = Some(s);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
                continue;
            };
            if s.lost.load(Ordering::SeqCst) {
                obs.event("app: connection lost, reconnecting");
                session = None;
                continue;
            }
            let seq = next_seq.fetch_add(1, Ordering::SeqCst);
            s.tracker.record_publish(Instant::now());
            let sent = s
                .publisher
                .basic_publish(
                    props.clone(),
                    seq.to_string().into_bytes(),
                    BasicPublishArguments::new("", queue),
                )
                .await;
            if let Err(e) = sent {
                obs.event(format!("publisher: {e}"));
                session = None;
                continue;
            }
            tokio::select! {
                permit = tokio::time::timeout(CONFIRM_TIMEOUT, s.confirms.acquire()) => match permit {
                    Ok(Ok(p)) => {
                        p.forget();
                        obs.confirmed(seq);
                    }
                    _ => obs.event(format!("publisher: no confirm for seq {seq} in 2 s")),
                },
                _ = s.lost_notify.notified() => {}
            }
            tokio::time::sleep(PUBLISH_EVERY).await;
        }
        timeline.await??;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let row = finish("amqprs", outage, &obs, start);
        if let Some(s) = session {
            let _ = s.conn.close().await;
        }
        Ok(row)
    }
}

/// Runs every (client, outage) scenario and returns the markdown report.
pub(crate) async fn run(broker: &Broker) -> Result<String> {
    let upstream: SocketAddr = tokio::net::lookup_host((broker.host.as_str(), broker.port))
        .await?
        .next()
        .context("broker address does not resolve")?;
    let mut rows = Vec::new();
    for outage in [Outage::ForcedClose, Outage::TcpDrop] {
        for client in ["lapin", "amqprs"] {
            eprintln!("[recovery] {client}: {}", outage.label());
            let proxy = Proxy::start(upstream).await?;
            let queue = format!("amqpcmp-{}-{client}-recovery", std::process::id());
            let row = match client {
                "lapin" => lapin_side::scenario(broker, Arc::clone(&proxy), outage, &queue).await,
                _ => amqprs_side::scenario(broker, Arc::clone(&proxy), outage, &queue).await,
            };
            proxy.down().await;
            delete_queue(broker, &queue).await;
            rows.push(row?);
        }
    }
    Ok(report(&rows))
}

/// Deletes a scenario's queue over a fresh direct connection.
async fn delete_queue(broker: &Broker, queue: &str) {
    use crate::client::Client;
    let result = async {
        let c = crate::amqprs_client::Amqprs::connect(broker).await?;
        c.delete_queue(queue).await?;
        c.close().await
    }
    .await;
    if let Err(error) = result {
        eprintln!("could not delete {queue}: {error:#} (delete it by hand)");
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn report(rows: &[RecoveryRow]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| client | outage | confirmed | confirmed after outage | confirmed but never delivered | redeliveries | first confirm after proxy back | first delivery after proxy back |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.client,
            r.outage.label(),
            r.confirmed,
            r.confirmed_after,
            r.lost,
            r.redelivered,
            secs(r.confirm_resumed),
            secs(r.delivery_resumed),
        );
    }
    for r in rows {
        let _ = writeln!(o, "\nEvents, {} / {}:\n", r.client, r.outage.label());
        let mut last = String::new();
        let mut repeats = 0;
        for e in &r.events {
            // Collapse runs of the same message (e.g. one per failed publish).
            let text = e.split_once(" s ").map_or(e.as_str(), |(_, t)| t);
            if text == last {
                repeats += 1;
                continue;
            }
            if repeats > 0 {
                let _ = writeln!(o, "  - (… repeated {repeats} more times)");
                repeats = 0;
            }
            let _ = writeln!(o, "  - {e}");
            last = text.to_string();
        }
        if repeats > 0 {
            let _ = writeln!(o, "  - (… repeated {repeats} more times)");
        }
    }
    o
}
