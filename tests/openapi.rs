//! docs/openapi.yaml and the server agree: every documented (method, path) is in the server's
//! route list and the reverse, and each one answers over real HTTP with something other than
//! the router's "no route" 404.

mod common;

use std::collections::BTreeSet;

use common::*;

/// (METHOD, /path) pairs under `paths:` of the OpenAPI document (two-space path keys,
/// four-space method keys: the file's own layout).
fn documented() -> BTreeSet<(String, String)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
    let mut out = BTreeSet::new();
    let mut in_paths = false;
    let mut path = String::new();
    for line in text.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = format!("/{}", p.trim_end_matches(':'));
        } else if let Some(m) = line.strip_prefix("    ") {
            let m = m.trim_end_matches(':');
            if ["get", "post", "put", "delete", "patch"].contains(&m) {
                out.insert((m.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn openapi_matches_routes() {
    let routes: BTreeSet<(String, String)> = siprec::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let docs = documented();
    let missing: Vec<_> = routes.difference(&docs).collect();
    let extra: Vec<_> = docs.difference(&routes).collect();
    assert!(
        missing.is_empty(),
        "routes missing from docs/openapi.yaml: {missing:?}"
    );
    assert!(extra.is_empty(), "documented but not served: {extra:?}");

    let _server = Server::start(18, &[]);
    let http_port = TestPorts::new(18).http;
    for (method, path) in &routes {
        let concrete = path.replace("{id}", "no-such-call");
        let (status, body) = http(http_port, method, &concrete, &[], "");
        let router_miss = status == 404 && body.contains("no route for");
        assert!(
            !router_miss,
            "{method} {path} is not routed: {status} {body}"
        );
        assert_ne!(status, 405, "{method} {path} answered 405");
    }
    let (status, body) = http(http_port, "GET", "/nope", &[], "");
    assert_eq!(status, 404);
    assert!(body.contains("no route for"), "{body}");
}
