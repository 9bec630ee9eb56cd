//! What the ingress tests share: an ingress over a catalog they fill, and raw requests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use skiff_catalog::{Catalog, ServiceInfo, ServiceKey};
use skiff_ingress::{Config, Ingress, Limits};
use skiff_model::{InstanceId, StackKey};

pub const HOST: &str = "web.shop.default.localhost";

pub fn id(index: u32) -> InstanceId {
    InstanceId {
        stack: StackKey::new("default", "shop").unwrap(),
        service: "web".into(),
        index,
    }
}

/// An ingress over a catalog where `web` has an instance at each of `ports`.
pub async fn start(ports: &[u16], limits: Limits) -> (Ingress, Arc<Catalog>) {
    let catalog = Catalog::new();
    catalog.set_services(BTreeMap::from([(
        ServiceKey::of(&id(1)),
        ServiceInfo::with_ports(&["http"]),
    )]));
    for (i, port) in ports.iter().enumerate() {
        catalog.add(
            &id(i as u32 + 1),
            "127.0.0.1".parse().unwrap(),
            BTreeMap::from([("http".to_string(), *port)]),
        );
    }
    let ingress = Ingress::start(
        "127.0.0.1:0".parse().unwrap(),
        Config {
            domain: "localhost".into(),
            limits,
            workers: 1,
            service_ports: None,
        },
        catalog.clone(),
    )
    .await
    .unwrap();
    (ingress, catalog)
}

/// Sends `request` as is and reads the whole answer (the ingress closes after errors or we
/// ask it to with `Connection: close`).
/// Blocking I/O, run off the runtime's threads.
pub async fn raw(addr: SocketAddr, request: String) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap()
}
