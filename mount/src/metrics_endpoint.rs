//! `--metrics ADDR` / `-o metrics=ADDR`: Prometheus metrics over HTTP at `/metrics`, from a
//! thread of its own, so that a scrape never waits behind file system work (and a stuck
//! metadata service stalls only the scrape).

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use elasticfs_core::metadata::MetaStore;
use elasticfs_core::metrics::{FiguresSource, FileSystemFigures};
use elasticfs_core::FileSystem;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric of a client (a mount or a gateway): its own, and the file system's.
pub fn client_registry(fs: &FileSystem) -> Registry {
    let mut registry = Registry::with_prefix("elasticfs");
    fs.metrics().register(&mut registry);
    registry.register_collector(Box::new(FileSystemFigures::of(fs.meta().clone())));
    registry
}

/// The metadata service's metrics: the file system's figures, once it is formatted.
pub fn service_registry(store: impl Fn() -> Option<Arc<dyn MetaStore>> + Send + Sync + 'static) -> Registry {
    let mut registry = Registry::with_prefix("elasticfs");
    let source: FiguresSource = Box::new(store);
    registry.register_collector(Box::new(FileSystemFigures::new(source)));
    registry
}

/// A running endpoint; dropping it stops it and lets go of what its registry holds (a mount's
/// metadata store, which must close at unmount).
pub struct MetricsEndpoint {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Listens on `addr` and serves `registry` until the endpoint is dropped. Fails at once if the
/// address cannot be bound.
pub fn serve(addr: &str, registry: Registry) -> Result<MetricsEndpoint> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("metrics address {addr}: cannot listen there (in use, or not an address of this host?)")
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let registry = Arc::new(registry);
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new().name("elasticfs-metrics".into()).spawn(move || {
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => return warn!("metrics endpoint stopped: {e}"),
            };
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = &mut stopped => return,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!("metrics endpoint: accepting a connection failed: {e}");
                        continue;
                    }
                };
                let registry = registry.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(req, registry.clone()));
                    let served = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
                        warn!("metrics endpoint: {e}");
                    }
                });
            }
        })
    })?;
    info!("metrics at http://{bound}/metrics");
    Ok(MetricsEndpoint { stop: Some(stop), thread: Some(thread) })
}

async fn answer(
    req: Request<Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, text: String| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        response
    };
    if req.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "elasticfs serves its metrics at /metrics\n".into()));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        response.headers_mut().insert(ALLOW, "GET, HEAD".parse().expect("a valid header"));
        return Ok(response);
    }
    // The file system's figures come from the metadata store, whose calls block.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        encode(&mut text, &registry).map(|_| text)
    })
    .await;
    Ok(match encoded {
        Ok(Ok(text)) => {
            let mut response = reply(StatusCode::OK, text);
            response.headers_mut().insert(CONTENT_TYPE, CONTENT.parse().expect("a valid header"));
            response
        }
        _ => reply(StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n".into()),
    })
}
