//! This node's copy of the part of the server's catalog its proxies serve: services with a
//! stable address, their ports, routes and ready instances. Fed by a blocking query that
//! wakes only when that part changes (a bring-up of 2,000 instances without ports sends
//! nothing), applied whole in one catalog change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_catalog::{Catalog, Endpoint, ServiceInfo, ServiceKey};
use skiff_client::Client;
use skiff_model::InstanceId;

/// How long one blocking query waits on the server.
const WAIT: Duration = Duration::from_secs(10);
/// Changes arriving closer together than this are applied together.
const BATCH: Duration = Duration::from_millis(20);

/// Instances a drain call withdrew, each with the server's catalog index from which on its
/// answers no longer list them. An answer computed before the withdrawal may arrive after the
/// call: the instance is left out of it rather than routed to again.
#[derive(Default)]
pub(crate) struct Withdrawals(Mutex<HashMap<(ServiceKey, u32), u64>>);

impl Withdrawals {
    pub(crate) fn hold(&self, id: &InstanceId, index: u64) {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.insert((ServiceKey::of(id), id.index), index);
    }

    /// Leaves out of an answer at `index` what was withdrawn after it; forgets what it
    /// has caught up with.
    fn apply(&self, index: u64, services: &mut Services) {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|(key, i), until| {
            if index >= *until {
                return false;
            }
            if let Some((_, endpoints)) = services.get_mut(key) {
                endpoints.remove(i);
            }
            true
        });
    }
}

type Services = BTreeMap<ServiceKey, (ServiceInfo, BTreeMap<u32, Endpoint>)>;

pub(crate) async fn run(server: Client, catalog: Arc<Catalog>, withdrawals: Arc<Withdrawals>) {
    let mut index = 0;
    let mut pause = Duration::from_millis(100);
    loop {
        let answer = tokio::time::timeout(WAIT * 2, server.addressed_catalog(index, WAIT)).await;
        match answer {
            Ok(Ok(view)) => {
                pause = Duration::from_millis(100);
                if view.index != index {
                    index = view.index;
                    let mut services: Services = view
                        .services
                        .into_iter()
                        .map(skiff_client::CatalogService::into_parts)
                        .collect();
                    withdrawals.apply(index, &mut services);
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use skiff_model::StackKey;

    use super::*;

    fn answer(indexes: &[u32]) -> Services {
        let key = ServiceKey::new(&StackKey::new("default", "shop").unwrap(), "web");
        let address: IpAddr = "10.231.0.2".parse().unwrap();
        let endpoints = indexes
            .iter()
            .map(|&index| {
                (
                    index,
                    Endpoint {
                        index,
                        address,
                        ports: BTreeMap::new(),
                    },
                )
            })
            .collect();
        BTreeMap::from([(key, (ServiceInfo::default(), endpoints))])
    }

    #[test]
    fn an_answer_older_than_a_drain_does_not_bring_the_instance_back() {
        let w = Withdrawals::default();
        let id: InstanceId = "default/shop/web-2".parse().unwrap();
        w.hold(&id, 10);
        let mut older = answer(&[1, 2]);
        w.apply(9, &mut older);
        let left: Vec<u32> = older
            .values()
            .flat_map(|(_, e)| e.keys().copied())
            .collect();
        assert_eq!(
            left,
            [1],
            "web-2 stays out of an answer from before its drain"
        );
        // An answer at or past the drain's index is taken as it is, and the hold is gone.
        let mut newer = answer(&[1, 2]);
        w.apply(10, &mut newer);
        assert_eq!(newer.values().map(|(_, e)| e.len()).sum::<usize>(), 2);
        assert!(w.0.lock().unwrap().is_empty());
    }
}
