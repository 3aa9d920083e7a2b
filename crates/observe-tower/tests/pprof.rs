//! How `/debug/pprof` is exposed through `ObserveLayer`: who gets in, where it is mounted.
#![cfg(feature = "pprof")]

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use observe_tower::{Access, ObserveLayer, Pprof, ProfilingSettings};

/// Serves `app` on a loopback port, with or without the client address in the requests.
async fn serve(app: Router, connect_info: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if connect_info {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        } else {
            axum::serve(listener, app).await
        }
    });
    addr
}

fn app(observe: ObserveLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "hi" }))
        .merge(observe.routes())
        .layer(observe)
}

async fn get_status(url: String, bearer: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = client.get(url);
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

#[tokio::test]
async fn by_default_only_loopback_clients_get_in_and_the_peer_address_is_required() {
    let with_peer = serve(app(ObserveLayer::new("svc")), true).await;
    let (status, body) = get_status(format!("http://{with_peer}/debug/pprof/"), None).await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>/debug/pprof</title>"));

    let without_peer = serve(app(ObserveLayer::new("svc")), false).await;
    let (status, body) = get_status(format!("http://{without_peer}/debug/pprof/"), None).await;
    assert_eq!(status, 403);
    assert!(
        body.contains("into_make_service_with_connect_info"),
        "{body}"
    );
}

#[tokio::test]
async fn a_bearer_token_guards_every_debug_route() {
    let pprof = Pprof::builder()
        .access(Access::bearer_token("s3cret").unwrap())
        .build();
    let addr = serve(app(ObserveLayer::new("svc").with_pprof(pprof)), false).await;
    for path in [
        "/debug/pprof/",
        "/debug/pprof/profile?seconds=0",
        "/debug/pprof/nope",
    ] {
        let url = format!("http://{addr}{path}");
        assert_eq!(get_status(url.clone(), None).await.0, 401, "{path}");
        assert_eq!(get_status(url, Some("wrong")).await.0, 401, "{path}");
    }
    let url = |path: &str| format!("http://{addr}{path}");
    assert_eq!(
        get_status(url("/debug/pprof/"), Some("s3cret")).await.0,
        200
    );
    assert_eq!(
        get_status(url("/debug/pprof/profile?seconds=0"), Some("s3cret"))
            .await
            .0,
        400
    );
    assert_eq!(
        get_status(url("/debug/pprof/nope"), Some("s3cret")).await.0,
        404
    );
    // The application's own routes are not affected.
    assert_eq!(get_status(url("/"), None).await.0, 200);
}

#[tokio::test]
async fn without_pprof_the_main_router_has_none_and_the_loopback_listener_serves_them() {
    let observe = ObserveLayer::new("svc").without_pprof();
    let public = serve(app(observe), true).await;
    assert_eq!(
        get_status(format!("http://{public}/debug/pprof/"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        get_status(format!("http://{public}/metrics"), None).await.0,
        200
    );

    let admin = observe_tower::serve_pprof_on_loopback(0, Pprof::new())
        .await
        .unwrap();
    assert!(admin.ip().is_loopback(), "{admin}");
    let (status, body) = get_status(format!("http://{admin}/debug/pprof/"), None).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#"href="profile""#));
    let (status, _) = get_status(
        format!("http://{admin}/debug/pprof/profile?seconds=1"),
        None,
    )
    .await;
    assert_eq!(status, 200);
}
