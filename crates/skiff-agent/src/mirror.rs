//! This node's copy of the part of the server's catalog its proxies serve: services with a
//! stable address, their ports, routes and ready instances. Fed by a blocking query that
//! wakes only when that part changes (a bring-up of 2,000 instances without ports sends
//! nothing), applied whole in one catalog change.

use std::sync::Arc;
use std::time::Duration;

use skiff_catalog::Catalog;
use skiff_client::Client;

/// How long one blocking query waits on the server.
const WAIT: Duration = Duration::from_secs(10);
/// Changes arriving closer together than this are applied together.
const BATCH: Duration = Duration::from_millis(20);

pub(crate) async fn run(server: Client, catalog: Arc<Catalog>) {
    let mut index = 0;
    let mut pause = Duration::from_millis(100);
    loop {
        let answer = tokio::time::timeout(WAIT * 2, server.addressed_catalog(index, WAIT)).await;
        match answer {
            Ok(Ok(view)) => {
                pause = Duration::from_millis(100);
                if view.index != index {
                    index = view.index;
                    let services = view
                        .services
                        .into_iter()
                        .map(skiff_client::CatalogService::into_parts)
                        .collect();
                    catalog.mirror(services);
                    tokio::time::sleep(BATCH).await;
                }
            }
            Ok(Err(e)) => {
                tracing::debug!("catalog: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(_) => {}
        }
    }
}
