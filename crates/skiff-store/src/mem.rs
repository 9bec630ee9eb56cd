//! In-memory store for tests: the same contract as [`crate::RedbStore`], nothing durable.

use std::collections::BTreeMap;
use std::sync::Mutex;

use skiff_model::{Event, Instance, InstanceId, Release, StackKey, StackSpec};

use crate::{Controls, NewEvent, Result, StackState, Store};

#[derive(Default)]
struct State {
    releases: BTreeMap<(StackKey, u64), Release>,
    current: BTreeMap<StackKey, Option<u64>>,
    controls: BTreeMap<StackKey, Controls>,
    instances: BTreeMap<String, Instance>,
    events: Vec<Event>,
}

pub struct MemStore {
    cluster_id: String,
    state: Mutex<State>,
}

impl MemStore {
    pub fn new(cluster_id: impl Into<String>) -> Self {
        MemStore {
            cluster_id: cluster_id.into(),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-written (every method
        // updates it in one step), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn cluster_id(&self) -> Result<String> {
        Ok(self.cluster_id.clone())
    }

    fn create_release(
        &self,
        stack: &StackKey,
        spec: StackSpec,
        source: String,
        now_ms: u64,
    ) -> Result<Release> {
        let mut s = self.lock();
        let number = s
            .releases
            .range((stack.clone(), 0)..=(stack.clone(), u64::MAX))
            .next_back()
            .map_or(1, |((_, n), _)| n + 1);
        let release = crate::new_release(stack, number, spec, source, now_ms);
        s.releases.insert((stack.clone(), number), release.clone());
        s.current.insert(stack.clone(), Some(number));
        Ok(release)
    }

    fn release(&self, stack: &StackKey, number: u64) -> Result<Option<Release>> {
        Ok(self.lock().releases.get(&(stack.clone(), number)).cloned())
    }

    fn releases(&self, stack: &StackKey) -> Result<Vec<Release>> {
        Ok(self
            .lock()
            .releases
            .range((stack.clone(), 0)..=(stack.clone(), u64::MAX))
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn set_current(&self, stack: &StackKey, number: Option<u64>) -> Result<()> {
        self.lock().current.insert(stack.clone(), number);
        Ok(())
    }

    fn stacks(&self) -> Result<Vec<StackState>> {
        let s = self.lock();
        Ok(s.current
            .iter()
            .map(|(k, c)| StackState {
                stack: k.clone(),
                current: *c,
                controls: s.controls.get(k).cloned().unwrap_or_default(),
            })
            .collect())
    }

    fn update_controls(
        &self,
        stack: &StackKey,
        f: &mut dyn FnMut(&mut Controls),
    ) -> Result<Controls> {
        let mut s = self.lock();
        let controls = s.controls.entry(stack.clone()).or_default();
        f(controls);
        controls.retain(|_, c| *c != Default::default());
        Ok(controls.clone())
    }

    fn put_instance(&self, instance: &Instance) -> Result<()> {
        self.lock()
            .instances
            .insert(crate::instance_key(&instance.id), instance.clone());
        Ok(())
    }

    fn delete_instance(&self, id: &InstanceId) -> Result<()> {
        self.lock().instances.remove(&crate::instance_key(id));
        Ok(())
    }

    fn instances(&self, stack: Option<&StackKey>) -> Result<Vec<Instance>> {
        Ok(self
            .lock()
            .instances
            .values()
            .filter(|i| stack.is_none_or(|s| &i.id.stack == s))
            .cloned()
            .collect())
    }

    fn append_event(&self, e: NewEvent) -> Result<Event> {
        let mut s = self.lock();
        let event = e.numbered(s.events.len() as u64 + 1);
        s.events.push(event.clone());
        Ok(event)
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        Ok(self
            .lock()
            .events
            .iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect())
    }
}
