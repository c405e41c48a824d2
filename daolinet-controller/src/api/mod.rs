//! The REST API (axum) under `/api/`, plus `/healthz` and `/metrics`.
//!
//! | method | path | body / answer |
//! |---|---|---|
//! | GET, POST | `/api/hosts` | [`HostReq`] -> [`Host`] |
//! | GET, DELETE | `/api/hosts/{name}` | |
//! | PUT | `/api/hosts/{name}` | [`HostRegistration`] -> [`Host`] (201 created, 200 updated or unchanged) |
//! | GET, POST | `/api/networks` | [`NetworkSpec`] -> [`Network`] |
//! | GET, DELETE | `/api/networks/{name}` | |
//! | GET, POST | `/api/containers` | [`ContainerSpec`] -> [`Container`] |
//! | GET, DELETE | `/api/containers/{id-or-name}` | |
//! | POST | `/api/containers/{id-or-name}/move` | [`MoveReq`] -> [`Container`] |
//! | GET, POST | `/api/groups` | [`GroupReq`] -> [`Group`] |
//! | GET, DELETE | `/api/groups/{name}` | |
//! | POST | `/api/groups/{name}/networks` | [`GroupMemberReq`] -> [`Group`] |
//! | DELETE | `/api/groups/{name}/networks/{network}` | -> [`Group`] |
//! | GET, POST | `/api/policies` | [`PolicyReq`] -> [`PairPolicy`] |
//! | DELETE | `/api/policies/{a}/{b}` | |
//! | GET, POST | `/api/firewalls` | [`FirewallReq`] -> [`Firewall`] |
//! | GET, DELETE | `/api/firewalls/{name}` | |
//! | GET | `/api/flows[?host=NAME]` | flows installed, per host |
//! | POST | `/api/trace` | [`TraceRequest`] -> [`Trace`] (would SRC reach DST, and how; 404 for an unknown container; with `"live": true` a real probe through the switches, see [`crate::ofserver::Server::probe`]: 503 when a host's switch is not connected or this controller is not the master) |
//! | GET | `/api/events[?since=SEQ&verdict=forwarded\|dropped&container=C&network=N]` | [`EventPage`]: recent PACKET_IN decisions, oldest first |
//! | GET | `/api/settings` | -> [`Settings`] (physical pool, gateway MAC: what hosts set themselves up with) |
//!
//! Every `/api/` request needs `Authorization: Bearer <token>`. Errors are
//! `{"error": "...", "field": "..."}` with 400 (bad input), 401 (token),
//! 404 (unknown object), 409 (duplicate, conflict, in use), 500/503 (store).
//! A mutation is durable in the store before its answer is sent, and the
//! connected switches have applied the flow changes it implies (confirmed
//! by a barrier; at most [`APPLY_WAIT`]): the new policy is in effect.

pub mod auth;
pub mod error;
pub mod tls;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use error::ApiError;

use crate::events::{EventPage, EventQuery};
use crate::service::Controller;
use daolinet_policy::addr::{Dpid, MacAddr};
use daolinet_policy::model::{
    Change, Container, ContainerSpec, Firewall, FirewallRule, Group, Host, Model, ModelError,
    Network, NetworkSpec, Object, PairAction, PairPolicy,
};
use daolinet_policy::trace::{Trace, TraceError, TraceRequest};
use daolinet_policy::FlowSpec;

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The controller.
    pub ctl: Arc<Controller>,
    /// The bearer token.
    pub token: Arc<str>,
    /// The OpenFlow server, for requests that reach the switches (`trace`
    /// with `live`); `None` in a process without one.
    pub switches: Option<Arc<crate::ofserver::Server>>,
}

/// Body of `POST /api/hosts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostReq {
    /// Name.
    pub name: String,
    /// Datapath id (hex string or number).
    pub dpid: Dpid,
    /// Underlay IP.
    pub ip: std::net::Ipv4Addr,
    /// Underlay MAC.
    pub mac: MacAddr,
    /// Uplink OpenFlow port.
    pub uplink_port: u32,
    /// MAC of the LOCAL port, if not `mac`.
    #[serde(default)]
    pub local_mac: Option<MacAddr>,
}

/// Body of `PUT /api/hosts/{name}`: a host registering itself (or being
/// registered again). Idempotent: the same body again changes nothing. A
/// name registered with another datapath id is refused (409, field
/// `dpid`), as is a datapath id, IP or MAC of another host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRegistration {
    /// Datapath id (hex string or number).
    pub dpid: Dpid,
    /// Underlay IP.
    pub ip: std::net::Ipv4Addr,
    /// Underlay MAC.
    pub mac: MacAddr,
    /// Uplink OpenFlow port.
    pub uplink_port: u32,
    /// MAC of the LOCAL port, if not `mac`.
    #[serde(default)]
    pub local_mac: Option<MacAddr>,
}

/// Body of `POST /api/containers/{id}/move`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveReq {
    /// New host.
    pub host: String,
    /// New OpenFlow port.
    pub port: u32,
}

/// Body of `POST /api/groups`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupReq {
    /// Name.
    pub name: String,
    /// Member networks.
    #[serde(default)]
    pub networks: Vec<String>,
}

/// Body of `POST /api/groups/{name}/networks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMemberReq {
    /// Network to add.
    pub network: String,
}

/// Body of `POST /api/policies`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyReq {
    /// Container id or name.
    pub a: String,
    /// Container id or name.
    pub b: String,
    /// `connect` or `disconnect`.
    pub action: PairAction,
}

/// Body of `POST /api/firewalls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallReq {
    /// Name.
    pub name: String,
    /// Container id or name.
    pub container: String,
    /// Rules `HOSTPORT:PORT[/tcp|/udp]`.
    pub rules: Vec<String>,
}

/// Query of `GET /api/flows`.
#[derive(Debug, Clone, Deserialize)]
pub struct FlowsQuery {
    /// Host name.
    pub host: Option<String>,
}

/// Flows of one host in `GET /api/flows`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostFlows {
    /// Host name.
    pub host: String,
    /// Datapath id.
    pub dpid: Dpid,
    /// Flows.
    pub flows: Vec<FlowSpec>,
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "request body must be a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let mut err = ApiError::bad_json(e.inner());
        if err.field.is_none() && path != "." && !path.is_empty() && !path.contains('?') {
            err.field = Some(path);
        }
        err
    })
}

/// How long an answer waits for the switches to confirm a mutation's flow
/// changes (see [`crate::applied`]); a switch that does not answer within
/// it delays the answer, never fails it.
pub const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs a mutation off the async runtime (the store fsyncs), then waits
/// (at most [`APPLY_WAIT`]) until the connected switches concerned have
/// applied the flow changes it implies: when the answer arrives, the new
/// policy is in effect.
async fn mutate<F>(st: &AppState, f: F) -> Result<Vec<Change>, ApiError>
where
    F: FnOnce(&mut Model) -> Result<Vec<Change>, ModelError> + Clone + Send + 'static,
{
    let ctl = st.ctl.clone();
    let (changes, applied) = tokio::task::spawn_blocking(move || ctl.mutate_applied(f))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)?;
    if !applied.wait(APPLY_WAIT).await {
        tracing::warn!(
            "a switch did not confirm the flow changes of a mutation within {APPLY_WAIT:?}"
        );
    }
    Ok(changes)
}

fn put_of<T>(changes: &[Change], pick: impl Fn(&Object) -> Option<T>) -> Result<T, ApiError> {
    changes
        .iter()
        .rev()
        .find_map(|c| match c {
            Change::Put(o) => pick(o),
            Change::Delete(..) => None,
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "mutation returned no object",
            )
        })
}

fn model(st: &AppState) -> Result<Arc<daolinet_policy::Snapshot>, ApiError> {
    st.ctl.snapshot().map_err(ApiError::from)
}

fn not_found(kind: &'static str, name: &str) -> ApiError {
    ModelError::NotFound {
        kind,
        name: name.to_string(),
    }
    .into()
}

// --- hosts ---

async fn list_hosts(State(st): State<AppState>) -> Result<Json<Vec<Host>>, ApiError> {
    Ok(Json(model(&st)?.model.hosts.values().cloned().collect()))
}

async fn get_host(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Host>, ApiError> {
    let s = model(&st)?;
    s.model
        .hosts
        .get(&name)
        .cloned()
        .map(Json)
        .ok_or_else(|| not_found("host", &name))
}

async fn create_host(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Host>), ApiError> {
    let r: HostReq = parse(&body)?;
    let host = Host {
        name: r.name,
        dpid: r.dpid,
        ip: r.ip,
        mac: r.mac,
        uplink_port: r.uplink_port,
        local_mac: r.local_mac,
    };
    let ch = mutate(&st, move |m| m.add_host(host)).await?;
    let h = put_of(&ch, |o| match o {
        Object::Host(h) => Some(h.clone()),
        _ => None,
    })?;
    Ok((StatusCode::CREATED, Json(h)))
}

async fn register_host(
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Host>), ApiError> {
    let r: HostRegistration = parse(&body)?;
    let host = Host {
        name: name.clone(),
        dpid: r.dpid,
        ip: r.ip,
        mac: r.mac,
        uplink_port: r.uplink_port,
        local_mac: r.local_mac,
    };
    let existed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = existed.clone();
    mutate(&st, move |m| {
        seen.store(
            m.hosts.contains_key(&host.name),
            std::sync::atomic::Ordering::Relaxed,
        );
        m.register_host(host)
    })
    .await?;
    let h = model(&st)?
        .model
        .hosts
        .get(&name)
        .cloned()
        .ok_or_else(|| not_found("host", &name))?;
    let status = if existed.load(std::sync::atomic::Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(h)))
}

async fn delete_host(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    mutate(&st, move |m| m.remove_host(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- networks ---

async fn list_networks(State(st): State<AppState>) -> Result<Json<Vec<Network>>, ApiError> {
    Ok(Json(model(&st)?.model.networks.values().cloned().collect()))
}

async fn get_network(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Network>, ApiError> {
    let s = model(&st)?;
    s.model
        .networks
        .get(&name)
        .cloned()
        .map(Json)
        .ok_or_else(|| not_found("network", &name))
}

async fn create_network(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Network>), ApiError> {
    let spec: NetworkSpec = parse(&body)?;
    let ch = mutate(&st, move |m| m.add_network(spec)).await?;
    let n = put_of(&ch, |o| match o {
        Object::Network(n) => Some(n.clone()),
        _ => None,
    })?;
    Ok((StatusCode::CREATED, Json(n)))
}

async fn delete_network(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    mutate(&st, move |m| m.remove_network(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- containers ---

async fn list_containers(State(st): State<AppState>) -> Result<Json<Vec<Container>>, ApiError> {
    Ok(Json(
        model(&st)?.model.containers.values().cloned().collect(),
    ))
}

async fn get_container(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Container>, ApiError> {
    let s = model(&st)?;
    Ok(Json(s.model.container(&id)?.clone()))
}

async fn create_container(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Container>), ApiError> {
    let spec: ContainerSpec = parse(&body)?;
    let pool = st.ctl.pool();
    let ch = mutate(&st, move |m| m.add_container(spec, pool)).await?;
    let c = put_of(&ch, |o| match o {
        Object::Container(c) => Some(c.clone()),
        _ => None,
    })?;
    Ok((StatusCode::CREATED, Json(c)))
}

async fn delete_container(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    mutate(&st, move |m| m.remove_container(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn move_container(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Container>, ApiError> {
    let r: MoveReq = parse(&body)?;
    let ch = mutate(&st, move |m| m.move_container(&id, &r.host, r.port)).await?;
    let c = put_of(&ch, |o| match o {
        Object::Container(c) => Some(c.clone()),
        _ => None,
    })?;
    Ok(Json(c))
}

// --- groups ---

async fn list_groups(State(st): State<AppState>) -> Result<Json<Vec<Group>>, ApiError> {
    Ok(Json(model(&st)?.model.groups.values().cloned().collect()))
}

async fn get_group(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Group>, ApiError> {
    let s = model(&st)?;
    Ok(Json(s.model.group(&name)?.clone()))
}

fn group_of(ch: &[Change]) -> Result<Group, ApiError> {
    put_of(ch, |o| match o {
        Object::Group(g) => Some(g.clone()),
        _ => None,
    })
}

async fn create_group(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    let r: GroupReq = parse(&body)?;
    let ch = mutate(&st, move |m| m.create_group(&r.name, &r.networks)).await?;
    Ok((StatusCode::CREATED, Json(group_of(&ch)?)))
}

async fn delete_group(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    mutate(&st, move |m| m.delete_group(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn group_add(
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Group>, ApiError> {
    let r: GroupMemberReq = parse(&body)?;
    let ch = mutate(&st, move |m| m.group_add(&name, &r.network)).await?;
    Ok(Json(group_of(&ch)?))
}

async fn group_remove(
    State(st): State<AppState>,
    Path((name, network)): Path<(String, String)>,
) -> Result<Json<Group>, ApiError> {
    let ch = mutate(&st, move |m| m.group_remove(&name, &network)).await?;
    Ok(Json(group_of(&ch)?))
}

// --- policies ---

async fn list_policies(State(st): State<AppState>) -> Result<Json<Vec<PairPolicy>>, ApiError> {
    Ok(Json(model(&st)?.model.policies.values().cloned().collect()))
}

async fn create_policy(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<PairPolicy>), ApiError> {
    let r: PolicyReq = parse(&body)?;
    let ch = mutate(&st, move |m| m.set_pair(&r.a, &r.b, r.action)).await?;
    let p = put_of(&ch, |o| match o {
        Object::Policy(p) => Some(p.clone()),
        _ => None,
    })?;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn delete_policy(
    State(st): State<AppState>,
    Path((a, b)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    mutate(&st, move |m| m.clear_pair(&a, &b)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- firewalls ---

async fn list_firewalls(State(st): State<AppState>) -> Result<Json<Vec<Firewall>>, ApiError> {
    Ok(Json(
        model(&st)?.model.firewalls.values().cloned().collect(),
    ))
}

async fn get_firewall(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Firewall>, ApiError> {
    let s = model(&st)?;
    s.model
        .firewalls
        .get(&name)
        .cloned()
        .map(Json)
        .ok_or_else(|| not_found("firewall", &name))
}

async fn create_firewall(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Firewall>), ApiError> {
    let r: FirewallReq = parse(&body)?;
    let rules = r
        .rules
        .iter()
        .map(|s| s.parse::<FirewallRule>())
        .collect::<Result<Vec<_>, _>>()?;
    let ch = mutate(&st, move |m| {
        m.create_firewall(&r.name, &r.container, rules)
    })
    .await?;
    let f = put_of(&ch, |o| match o {
        Object::Firewall(f) => Some(f.clone()),
        _ => None,
    })?;
    Ok((StatusCode::CREATED, Json(f)))
}

async fn delete_firewall(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    mutate(&st, move |m| m.delete_firewall(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- flows ---

async fn list_flows(
    State(st): State<AppState>,
    Query(q): Query<FlowsQuery>,
) -> Result<Json<Vec<HostFlows>>, ApiError> {
    let s = model(&st)?;
    let hosts: Vec<&Host> = match &q.host {
        Some(h) => vec![s.model.host(h)?],
        None => s.model.hosts.values().collect(),
    };
    let mut out = Vec::new();
    for h in hosts {
        out.push(HostFlows {
            host: h.name.clone(),
            dpid: h.dpid,
            flows: st.ctl.flows(Some(h.dpid))?,
        });
    }
    Ok(Json(out))
}

// --- trace ---

async fn trace(State(st): State<AppState>, body: Bytes) -> Result<Json<Trace>, ApiError> {
    let r: TraceRequest = parse(&body)?;
    if r.live {
        return live_trace(&st, &r).await.map(Json);
    }
    let s = model(&st)?;
    let ctl = st.ctl.clone();
    let installed = move |d: Dpid| ctl.flows(Some(d)).unwrap_or_default();
    daolinet_policy::trace::trace(&s, &st.ctl.cfg, &installed, &r)
        .map(Json)
        .map_err(trace_error)
}

fn trace_error(e: TraceError) -> ApiError {
    let status = match e {
        TraceError::UnknownContainer { .. } => StatusCode::NOT_FOUND,
        TraceError::UnknownHost { .. } => StatusCode::CONFLICT,
        TraceError::BadRequest(_) => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.to_string()).with_field(e.field())
}

/// `trace` with a real probe through the switches.
async fn live_trace(st: &AppState, r: &TraceRequest) -> Result<Trace, ApiError> {
    use crate::ofserver::ProbeError;
    let Some(srv) = &st.switches else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this process runs no OpenFlow server: no live trace",
        ));
    };
    srv.probe(r).await.map_err(|e| match e {
        ProbeError::Trace(e) => trace_error(e),
        ProbeError::NotConnected { field, .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).with_field(field)
        }
        ProbeError::NotMaster | ProbeError::Switch { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        ProbeError::Internal(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })
}

// --- events ---

async fn events(
    State(st): State<AppState>,
    Query(q): Query<EventQuery>,
) -> Result<Json<EventPage>, ApiError> {
    if let Some(v) = q.verdict.as_deref() {
        if !matches!(v, "forwarded" | "dropped") {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("verdict {v:?}: use forwarded or dropped"),
            )
            .with_field("verdict"));
        }
    }
    let s = model(&st)?;
    if let Some(c) = q.container.as_deref() {
        s.model.container(c)?;
    }
    if let Some(n) = q.network.as_deref() {
        s.model.network(n)?;
    }
    Ok(Json(st.ctl.events.query(&s, &q)))
}

// --- plumbing ---

async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| auth::token_eq(t.trim(), &st.token));
    let resp = if ok {
        next.run(req).await
    } else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token (send 'Authorization: Bearer <token>'; the token is in the controller's token file)",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        r
    };
    if resp.status().is_client_error() || resp.status().is_server_error() {
        st.ctl.metrics.api_error();
    }
    resp
}

async fn api_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such API endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

/// Body of `GET /api/settings`: what hosts need to know of the controller's
/// configuration to set themselves up (NAT-out routes and masquerades the
/// physical pool).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// The pool physical IPs come from.
    pub physical_pool: String,
    /// The gateway MAC answering containers' ARP.
    pub gateway_mac: MacAddr,
}

async fn settings(State(st): State<AppState>) -> Json<Settings> {
    Json(Settings {
        physical_pool: st.ctl.cfg.physical_pool.to_string(),
        gateway_mac: st.ctl.cfg.gateway_mac,
    })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.ctl.metrics_text(),
    )
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/hosts", get(list_hosts).post(create_host))
        .route(
            "/hosts/{name}",
            get(get_host).put(register_host).delete(delete_host),
        )
        .route("/networks", get(list_networks).post(create_network))
        .route("/networks/{name}", get(get_network).delete(delete_network))
        .route("/containers", get(list_containers).post(create_container))
        .route(
            "/containers/{id}",
            get(get_container).delete(delete_container),
        )
        .route("/containers/{id}/move", post(move_container))
        .route("/groups", get(list_groups).post(create_group))
        .route("/groups/{name}", get(get_group).delete(delete_group))
        .route("/groups/{name}/networks", post(group_add))
        .route(
            "/groups/{name}/networks/{network}",
            axum::routing::delete(group_remove),
        )
        .route("/policies", get(list_policies).post(create_policy))
        .route("/policies/{a}/{b}", axum::routing::delete(delete_policy))
        .route("/firewalls", get(list_firewalls).post(create_firewall))
        .route(
            "/firewalls/{name}",
            get(get_firewall).delete(delete_firewall),
        )
        .route("/flows", get(list_flows))
        .route("/settings", get(settings))
        .route("/trace", post(trace))
        .route("/events", get(events))
        .fallback(api_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .nest("/api", api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}
