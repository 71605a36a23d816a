//! The whole per-connection service chain for the proxy listener, built in one function.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderName, AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, SET_COOKIE};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_http::sensitive_headers::{SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer};

use super::relay::ConnGuard;
use super::target::Pinned;
use crate::body::Body;
use crate::outbound::Held;
use crate::state::Shared;

/// Request headers whose values are marked sensitive before anything can log them.
fn sensitive_request_headers() -> [HeaderName; 5] {
    [
        AUTHORIZATION,
        PROXY_AUTHORIZATION,
        COOKIE,
        HeaderName::from_static("x-api-key"),
        HeaderName::from_static("api-key"),
    ]
}

/// sensitive-header marking -> [`super::request::handle`]. `pinned` is set for the requests
/// inside an intercepted CONNECT: they all go to its authority. `held` is the upstream
/// connection the agent connection keeps between its requests (none: the pool).
pub fn proxy_service(
    shared: Arc<Shared>,
    peer: SocketAddr,
    guard: Arc<ConnGuard>,
    pinned: Option<Arc<Pinned>>,
    held: Option<Arc<Held>>,
) -> TowerToHyperService<
    impl tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future = impl Send> + Clone,
> {
    let handler = tower::service_fn(move |req: Request<Incoming>| {
        let (shared, guard, pinned, held) = (shared.clone(), guard.clone(), pinned.clone(), held.clone());
        async move {
            let conn = super::request::Conn { peer, guard: &guard, pinned: pinned.as_deref(), held: held.as_deref() };
            Ok::<_, Infallible>(super::request::handle(shared, conn, req).await)
        }
    });
    let svc = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new(sensitive_request_headers()))
        .layer(SetSensitiveResponseHeadersLayer::new([SET_COOKIE]))
        .service(handler);
    TowerToHyperService::new(svc)
}
