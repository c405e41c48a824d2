//! The shared [`Store`] for several controllers: etcd's v3 API (etcd 3.4
//! and later) through the `etcd-client` crate.
//!
//! Layout under the prefix (default `/daolinet/`):
//! - `model/<kind>/<key>`: one JSON value per object;
//! - `model/_rev`: the revision marker, written by every batch. A batch is
//!   one etcd transaction (its writes plus the marker), so the store's
//!   [`Revision`] is the marker's `mod_revision`, and a guarded batch
//!   compares that `mod_revision` with the revision its model was read at:
//!   any other controller's batch in between makes it fail with
//!   [`StoreError::Conflict`], nothing written.
//! - `leader/`: the leader election (see [`crate::election`]);
//! - `generation-tag`: the controller set's tag, the high bits of the
//!   generation ids it elects (see [`crate::generation`]);
//! - `api-token`: the shared REST API token.
//!
//! [`Store::list`] reads the model in pages pinned to one etcd revision;
//! [`Store::watch`] is an etcd watch from the next revision whose events
//! are grouped by revision into [`WatchBatch`]es (groups without the marker
//! are writes by something other than a controller: logged and skipped).
//! The watch asks for a leader (`require_leader`), so a member cut off from
//! its quorum ends it instead of going quiet; the follower then lists again.
//!
//! The blocking [`Store`] calls run on the store's own small tokio runtime
//! and wait on a channel: they may be called from any thread, including a
//! tokio worker, without nesting runtimes.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions, WatchStream,
};

use super::{Batch, Listing, Op, Revision, Store, StoreError, Watch, WatchBatch};
use crate::generation::SetTag;
use daolinet_policy::model::Kind;

/// Where the etcd store is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://IP:PORT`).
    pub endpoints: Vec<String>,
    /// Key prefix owned by the controllers (ends with `/`).
    pub prefix: String,
    /// Deadline of one request (and of connecting).
    pub timeout: Duration,
}

impl EtcdConfig {
    /// The default key prefix.
    pub const PREFIX: &'static str = "/daolinet/";

    /// Parses `etcd:http://A:2379[,http://B:2379...]`; `None` when `spec`
    /// does not start with `etcd:` (it is then a file path).
    pub fn parse(spec: &str) -> Option<Result<EtcdConfig, String>> {
        let list = spec.strip_prefix("etcd:")?;
        let mut endpoints = Vec::new();
        for url in list.split(',') {
            let url = url.trim();
            if let Err(why) = check_endpoint(url) {
                return Some(Err(format!("--store {spec}: endpoint {url:?}: {why}")));
            }
            endpoints.push(url.to_string());
        }
        Some(Ok(EtcdConfig {
            endpoints,
            prefix: Self::PREFIX.into(),
            timeout: Duration::from_secs(3),
        }))
    }
}

impl EtcdConfig {
    /// Checks a key prefix (`--etcd-prefix`): starts and ends with `/`,
    /// something between, no spaces or control characters.
    pub fn check_prefix(p: &str) -> Result<(), String> {
        if p.len() < 3 || !p.starts_with('/') || !p.ends_with('/') {
            return Err("expected /NAME/ (starting and ending with /)".into());
        }
        if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("no spaces or control characters".into());
        }
        Ok(())
    }
}

fn check_endpoint(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Err("TLS to etcd is not supported: use http://HOST:PORT".into());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("expected http://HOST:PORT".into());
    };
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| "expected http://HOST:PORT".to_string())?;
    if host.is_empty() || host.contains('/') {
        return Err("expected http://HOST:PORT".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("bad port {port:?}")),
    }
}

/// The store in an etcd cluster.
pub struct EtcdStore {
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    client: Client,
    cfg: EtcdConfig,
    /// Random id of this store handle, and a counter: batch ids.
    instance: u64,
    batches: AtomicU64,
}

/// How a request failed.
enum Failure {
    /// It did not reach a working member: may be tried again.
    Retry(String),
    /// Anything else.
    Fatal(String),
}

/// True for failures that mean "this member or connection, not the
/// request": a broken or refused connection, a member without a leader.
fn retryable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

fn random_u64() -> u64 {
    use std::io::Read as _;
    let mut b = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Allowed from inside another runtime, unlike dropping it.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd {what}: {e}"))
}

fn rev_i64(r: Revision) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

fn rev_u64(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What a key under `<prefix>model/` is.
#[derive(Debug, PartialEq, Eq)]
enum Key<'a> {
    Marker,
    Object(Kind, &'a str),
    Foreign,
}

fn kind_of(s: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| k.as_str() == s)
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers (one read within
    /// the timeout): an unreachable etcd is an error here, not later.
    pub fn connect(cfg: EtcdConfig) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| backend("runtime", e))?;
        let handle = rt.handle().clone();
        let opts = ConnectOptions::new()
            .with_connect_timeout(cfg.timeout)
            .with_timeout(cfg.timeout)
            .with_keep_alive(Duration::from_secs(1), cfg.timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let endpoints = cfg.endpoints.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        let t = cfg.timeout;
        handle.spawn(async move {
            let r = tokio::time::timeout(t, Client::connect(endpoints, Some(opts))).await;
            let _ = tx.send(r);
        });
        let client = match rx.recv_timeout(cfg.timeout + Duration::from_secs(1)) {
            Ok(Ok(Ok(c))) => c,
            Ok(Ok(Err(e))) => return Err(unreachable(&cfg, e)),
            _ => return Err(unreachable(&cfg, "no answer")),
        };
        let store = EtcdStore {
            rt: Some(rt),
            handle,
            client,
            cfg,
            instance: random_u64(),
            batches: AtomicU64::new(0),
        };
        store.revision().map_err(|e| {
            unreachable(
                &store.cfg,
                e.to_string().trim_start_matches("store backend: "),
            )
        })?;
        Ok(store)
    }

    /// The etcd client (for the leader election, on [`EtcdStore::runtime`]).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The store's tokio runtime.
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &EtcdConfig {
        &self.cfg
    }

    fn model_prefix(&self) -> String {
        format!("{}model/", self.cfg.prefix)
    }

    fn marker(&self) -> String {
        format!("{}model/_rev", self.cfg.prefix)
    }

    fn key(&self, kind: Kind, key: &str) -> String {
        format!("{}model/{}/{key}", self.cfg.prefix, kind.as_str())
    }

    fn parser(&self) -> KeyParser {
        KeyParser {
            prefix: self.model_prefix(),
        }
    }

    /// Runs the future `make` builds on the store's runtime and waits for
    /// it; failures that say the request did not reach a working member
    /// (broken connection, member without a leader) are retried with a
    /// short pause, on another member if the client has one, until the
    /// request timeout. For reads only: a retried write could apply twice.
    fn run<T, F, M>(&self, what: &str, mut make: M) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
        M: FnMut() -> F,
    {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.attempt(make(), deadline) {
                Ok(v) => return Ok(v),
                Err(Failure::Retry(e)) if Instant::now() + pause < deadline => {
                    tracing::debug!(error = %e, what, "etcd request failed: retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(300));
                }
                Err(Failure::Retry(e) | Failure::Fatal(e)) => return Err(backend(what, e)),
            }
        }
    }

    /// One try of `fut`, waiting until `deadline` at most.
    fn attempt<T, F>(&self, fut: F, deadline: Instant) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let t = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(50));
        self.handle.spawn(async move {
            let r = tokio::time::timeout(t, fut).await;
            let _ = tx.send(r);
        });
        match rx.recv_timeout(t + Duration::from_secs(1)) {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(if retryable(&e) {
                Failure::Retry(e.to_string())
            } else {
                Failure::Fatal(e.to_string())
            }),
            Ok(Err(_)) | Err(_) => Err(Failure::Fatal(format!(
                "no answer within {} ms",
                self.cfg.timeout.as_millis()
            ))),
        }
    }

    /// A new batch id (the marker's value): after a failure that may or
    /// may not have committed, the marker tells whether it did.
    fn batch_id(&self) -> String {
        let n = self.batches.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n}", self.instance)
    }

    /// The marker's revision if the last batch was `id`.
    fn committed(&self, id: &str) -> Result<Option<Revision>, Failure> {
        let mut kv = self.client.kv_client();
        let marker = self.marker();
        let deadline = Instant::now() + self.cfg.timeout;
        let resp = self.attempt(async move { kv.get(marker, None).await }, deadline)?;
        Ok(resp
            .kvs()
            .first()
            .filter(|kv| kv.value() == id.as_bytes())
            .map(|kv| rev_u64(kv.mod_revision())))
    }

    /// One transaction of `batch` with marker value `id`.
    fn try_apply(
        &self,
        batch: &Batch,
        id: &str,
        deadline: Instant,
    ) -> Result<Result<Revision, StoreError>, Failure> {
        let marker = self.marker();
        let mut ops: Vec<TxnOp> = batch
            .last_writes()
            .into_iter()
            .map(|op| match op {
                Op::Put { kind, key, value } => {
                    TxnOp::put(self.key(*kind, key), value.clone(), None)
                }
                Op::Delete { kind, key } => TxnOp::delete(self.key(*kind, key), None),
            })
            .collect();
        ops.push(TxnOp::put(marker.clone(), id, None));
        // etcd-client wants when(), and_then(), or_else() in that order.
        let txn = match batch.expect_revision {
            Some(expected) => Txn::new()
                .when([Compare::mod_revision(
                    marker.clone(),
                    CompareOp::Equal,
                    rev_i64(expected),
                )])
                .and_then(ops)
                .or_else([TxnOp::get(marker, None)]),
            None => Txn::new().and_then(ops),
        };
        let mut kv = self.client.kv_client();
        let resp = self.attempt(async move { kv.txn(txn).await }, deadline)?;
        if resp.succeeded() {
            return Ok(Ok(resp.header().map_or(0, |h| rev_u64(h.revision()))));
        }
        let marker_now = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map_or((0, false), |kv| {
                (kv.mod_revision(), kv.value() == id.as_bytes())
            })),
            _ => None,
        });
        Ok(match marker_now {
            // An earlier try of this very batch committed.
            Some((rev, true)) => Ok(rev_u64(rev)),
            other => Err(StoreError::Conflict {
                expected: batch.expect_revision.unwrap_or(0),
                actual: other.map_or(0, |(rev, _)| rev_u64(rev)),
            }),
        })
    }

    /// The value of `<prefix><name>` (outside the model), set to `value`
    /// first if it has none: one atomic create-if-absent, so controllers
    /// starting together agree on one value (the API token).
    pub fn create_or_get(&self, name: &str, value: &str) -> Result<String, StoreError> {
        let key = format!("{}{name}", self.cfg.prefix);
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        // Idempotent: a retry after a lost answer finds the value set.
        let kv = self.client.kv_client();
        let resp = self.run("transaction", || {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })?;
        if resp.succeeded() {
            return Ok(value.to_string());
        }
        resp.op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .ok_or_else(|| backend("transaction", format!("{name} vanished")))
    }

    /// This controller set's tag ([`crate::generation`]): the value of
    /// `<prefix>generation-tag`, a random one created by the set's first
    /// controller. An unreadable stored value is an error (one line, the
    /// controller does not start).
    pub fn set_tag(&self) -> Result<SetTag, StoreError> {
        let mut raw = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
            .map_err(|e| StoreError::Backend(format!("/dev/urandom: {e}")))?;
        let fresh = SetTag::from_random(u32::from_le_bytes(raw));
        let stored = self.create_or_get(Self::TAG_KEY, &fresh.to_hex())?;
        SetTag::parse(&stored).ok_or_else(|| {
            StoreError::Backend(format!(
                "{}{} is {stored:?}, not a controller set's tag (six hex digits, \
                 not 000000 nor ffffff): delete it and start the controllers again",
                self.cfg.prefix,
                Self::TAG_KEY
            ))
        })
    }

    /// Where [`EtcdStore::set_tag`] keeps the tag (under the prefix).
    const TAG_KEY: &'static str = "generation-tag";

    /// The marker's `mod_revision` (0 before the first batch).
    fn marker_revision(&self) -> Result<Revision, StoreError> {
        let kv = self.client.kv_client();
        let marker = self.marker();
        let resp = self.run("get", || {
            let (mut kv, marker) = (kv.clone(), marker.clone());
            async move { kv.get(marker, None).await }
        })?;
        Ok(resp
            .kvs()
            .first()
            .map_or(0, |kv| rev_u64(kv.mod_revision())))
    }
}

fn unreachable(cfg: &EtcdConfig, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!(
        "etcd at {} unreachable within {} ms: {e}",
        cfg.endpoints.join(","),
        cfg.timeout.as_millis()
    ))
}

/// Keys per page of a listing.
const PAGE: i64 = 1000;

impl Store for EtcdStore {
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let kv = self.client.kv_client();
        let k = self.key(kind, key);
        let resp = self.run("get", || {
            let (mut kv, k) = (kv.clone(), k.clone());
            async move { kv.get(k, None).await }
        })?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    fn list(&self) -> Result<Listing, StoreError> {
        let prefix = self.model_prefix();
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.into_bytes();
        let mut pinned: i64 = 0;
        let mut listing = Listing::default();
        let parser = self.parser();
        loop {
            let kv = self.client.kv_client();
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if pinned > 0 {
                opts = opts.with_revision(pinned);
            }
            let resp = self.run("list", || {
                let (mut kv, key, opts) = (kv.clone(), from.clone(), opts.clone());
                async move { kv.get(key, Some(opts)).await }
            })?;
            if pinned == 0 {
                pinned = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                match parser.parse(kv.key()) {
                    Key::Marker => listing.revision = rev_u64(kv.mod_revision()),
                    Key::Object(kind, key) => {
                        listing
                            .items
                            .push((kind, key.to_string(), kv.value().to_vec()))
                    }
                    Key::Foreign => {}
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        listing.items.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(listing)
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        self.marker_revision()
    }

    fn apply(&self, batch: Batch) -> Result<Revision, StoreError> {
        let id = self.batch_id();
        let deadline = Instant::now() + self.cfg.timeout;
        let mut pause = Duration::from_millis(20);
        let mut tried = false;
        loop {
            let r = if tried {
                // The last try may have committed before its answer was lost.
                match self.committed(&id) {
                    Ok(Some(rev)) => return Ok(rev),
                    Ok(None) => self.try_apply(&batch, &id, deadline),
                    Err(f) => Err(f),
                }
            } else {
                self.try_apply(&batch, &id, deadline)
            };
            tried = true;
            match r {
                Ok(result) => return result,
                Err(Failure::Retry(e)) if Instant::now() + pause < deadline => {
                    tracing::debug!(error = %e, "etcd transaction failed: retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(300));
                }
                Err(Failure::Retry(e) | Failure::Fatal(e)) => {
                    return Err(backend("transaction", e))
                }
            }
        }
    }

    fn watch(&self, after: Revision) -> Result<Watch, StoreError> {
        let wc = self.client.watch_client();
        let prefix = self.model_prefix();
        let opts = WatchOptions::new()
            .with_range(prefix_end(prefix.as_bytes()))
            .with_start_revision(rev_i64(after).saturating_add(1));
        // Wait for etcd to accept the watch: a compacted start revision is
        // reported here, not later.
        let mut stream: WatchStream = self
            .run("watch", || {
                let (mut wc, prefix, opts) = (wc.clone(), prefix.clone(), opts.clone());
                async move {
                    let mut s = wc.watch(prefix, Some(opts)).await?;
                    match s.message().await? {
                        Some(r) if r.created() && !r.canceled() => Ok(s),
                        Some(r) if r.compact_revision() > 0 => Err(etcd_client::Error::WatchError(
                            format!("compacted:{}", r.compact_revision()),
                        )),
                        Some(r) => Err(etcd_client::Error::WatchError(format!(
                            "refused: {}",
                            r.cancel_reason()
                        ))),
                        None => Err(etcd_client::Error::WatchError("closed".into())),
                    }
                }
            })
            .map_err(|e| match e {
                StoreError::Backend(m) if m.contains("compacted:") => {
                    let oldest = m
                        .rsplit("compacted:")
                        .next()
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    StoreError::Compacted { after, oldest }
                }
                other => other,
            })?;
        let (tx, rx) = mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let this = self.parser();
        self.handle.spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = &mut stop_rx => break,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        tracing::warn!("etcd watch closed");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd watch failed");
                        break;
                    }
                };
                if resp.canceled() {
                    tracing::warn!(
                        reason = resp.cancel_reason(),
                        compacted = resp.compact_revision(),
                        "etcd watch cancelled"
                    );
                    break;
                }
                if !this.forward(&resp, &tx) {
                    break;
                }
            }
            // Dropping `tx` tells the follower to list again.
        });
        Ok(Watch::with_stop(rx, stop_tx))
    }
}

/// Turns watch events into batches (owned by the watch task).
struct KeyParser {
    prefix: String,
}

impl KeyParser {
    fn parse<'a>(&self, full: &'a [u8]) -> Key<'a> {
        let Ok(s) = std::str::from_utf8(full) else {
            return Key::Foreign;
        };
        let Some(rest) = s.strip_prefix(&self.prefix) else {
            return Key::Foreign;
        };
        if rest == "_rev" {
            return Key::Marker;
        }
        match rest.split_once('/') {
            Some((k, key)) if !key.is_empty() => match kind_of(k) {
                Some(kind) => Key::Object(kind, key),
                None => Key::Foreign,
            },
            _ => Key::Foreign,
        }
    }

    /// Sends the batches of one watch response; false when the receiver is
    /// gone. etcd never splits one revision's events over two responses.
    fn forward(&self, resp: &etcd_client::WatchResponse, tx: &mpsc::Sender<WatchBatch>) -> bool {
        let mut cur: Option<(i64, bool, Vec<Op>)> = None;
        let flush = |cur: Option<(i64, bool, Vec<Op>)>| -> bool {
            match cur {
                Some((rev, true, ops)) => tx
                    .send(WatchBatch {
                        revision: rev_u64(rev),
                        ops,
                    })
                    .is_ok(),
                Some((rev, false, _)) => {
                    tracing::warn!(revision = rev, "write under the controllers' etcd prefix without the revision marker: ignored");
                    true
                }
                None => true,
            }
        };
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let rev = kv.mod_revision();
            if cur.as_ref().is_some_and(|c| c.0 != rev) && !flush(cur.take()) {
                return false;
            }
            let c = cur.get_or_insert_with(|| (rev, false, Vec::new()));
            match (self.parse(kv.key()), ev.event_type()) {
                (Key::Marker, _) => c.1 = true,
                (Key::Object(kind, key), EventType::Put) => c.2.push(Op::Put {
                    kind,
                    key: key.to_string(),
                    value: kv.value().to_vec(),
                }),
                (Key::Object(kind, key), EventType::Delete) => c.2.push(Op::Delete {
                    kind,
                    key: key.to_string(),
                }),
                (Key::Foreign, _) => {}
            }
        }
        flush(cur.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_spec_parsing() {
        let c = EtcdConfig::parse("etcd:http://10.0.0.1:2379,http://10.0.0.2:2379")
            .unwrap()
            .unwrap();
        assert_eq!(
            c.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert!(EtcdConfig::parse("/var/lib/x.redb").is_none());
        for bad in [
            "etcd:",
            "etcd:10.0.0.1:2379",
            "etcd:https://10.0.0.1:2379",
            "etcd:http://10.0.0.1",
            "etcd:http://10.0.0.1:0",
            "etcd:http://:2379",
            "etcd:http://10.0.0.1:2379,",
        ] {
            let e = EtcdConfig::parse(bad).unwrap().unwrap_err();
            assert!(e.starts_with("--store "), "{bad}: {e}");
        }
    }

    #[test]
    fn prefixes_are_checked() {
        for ok in ["/daolinet/", "/tenant-2/", "/a/b/"] {
            assert_eq!(EtcdConfig::check_prefix(ok), Ok(()), "{ok}");
        }
        for bad in ["", "/", "//x", "daolinet/", "/daolinet", "/a b/", "/a\tb/"] {
            assert!(EtcdConfig::check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/daolinet/model/"), b"/daolinet/model0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
    }

    #[test]
    fn keys() {
        let p = KeyParser {
            prefix: "/d/model/".into(),
        };
        assert_eq!(p.parse(b"/d/model/_rev"), Key::Marker);
        assert_eq!(
            p.parse(b"/d/model/policy/a:b"),
            Key::Object(Kind::Policy, "a:b")
        );
        assert_eq!(p.parse(b"/d/model/nope/x"), Key::Foreign);
        assert_eq!(p.parse(b"/d/model/host/"), Key::Foreign);
        assert_eq!(p.parse(b"/d/leader/1"), Key::Foreign);
    }
}
