//! Environment records (`envs/<name>`) and the removal of a whole stack's records.

use skiff_model::{Environment, StackKey};

use crate::kv::{Expect, Kv, KvError, TxnOp};
use crate::store::{controls_key, decode, encode, stack_key};
use crate::{Result, Store, StoreError};

pub(crate) const ENVS: &str = "envs/";

/// Compare-and-swap attempts before an update gives up.
const TRIES: u32 = 100;

fn env_key(name: &str) -> String {
    format!("{ENVS}{name}")
}

impl<K: Kv> Store<K> {
    /// The environment's record, if it has one (`default` needs none).
    pub async fn env(&self, name: &str) -> Result<Option<Environment>> {
        let key = env_key(name);
        self.kv()
            .get(&key)
            .await?
            .map(|e| decode(&key, &e.value))
            .transpose()
    }

    /// Every environment with a record, by name.
    pub async fn envs(&self) -> Result<Vec<Environment>> {
        let (entries, _) = self.kv().list(ENVS).await?;
        entries.iter().map(|e| decode(&e.key, &e.value)).collect()
    }

    /// Records a new environment (durably); `false` when one of that name exists already
    /// (nothing is written then).
    pub async fn create_env(&self, env: &Environment) -> Result<bool> {
        let key = env_key(&env.name);
        match self
            .kv()
            .put(&key, encode(&key, env)?, Expect::Absent)
            .await
        {
            Ok(_) => Ok(true),
            Err(KvError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Changes an environment's record with `f` (which may run again if another writer
    /// changed it meanwhile; an `Err` from it is returned as is, nothing written) in one
    /// durable compare-and-swap. `None` when it has no record.
    pub async fn update_env<E>(
        &self,
        name: &str,
        mut f: impl FnMut(&mut Environment) -> std::result::Result<(), E> + Send,
    ) -> Result<Option<std::result::Result<Environment, E>>> {
        let key = env_key(name);
        for _ in 0..TRIES {
            let Some(entry) = self.kv().get(&key).await? else {
                return Ok(None);
            };
            let before: Environment = decode(&key, &entry.value)?;
            let mut env = before.clone();
            if let Err(e) = f(&mut env) {
                return Ok(Some(Err(e)));
            }
            if env == before {
                return Ok(Some(Ok(env)));
            }
            match self
                .kv()
                .put(
                    &key,
                    encode(&key, &env)?,
                    Expect::Revision(entry.mod_revision),
                )
                .await
            {
                Ok(_) => return Ok(Some(Ok(env))),
                Err(KvError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended { key, tries: TRIES })
    }

    /// Forgets an environment's record (durably); `false` when it had none.
    pub async fn delete_env(&self, name: &str) -> Result<bool> {
        let key = env_key(name);
        match self.kv().delete(&key, Expect::Any).await {
            Ok(n) => Ok(n.is_some()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes everything the store keeps of a stack — its record, releases, controls and
    /// instance records — in one durable transaction. Its instances must be stopped first
    /// (the stack down); an instance reported after this is recorded again until its agent
    /// reports it removed.
    pub async fn remove_stack(&self, stack: &StackKey) -> Result<()> {
        let path = format!("{}/{}/", stack.env, stack.stack);
        let mut ops = vec![
            TxnOp::delete(stack_key(stack), Expect::Any),
            TxnOp::delete(controls_key(stack), Expect::Any),
        ];
        for prefix in ["releases/", "instances/"] {
            let (entries, _) = self.kv().list(&format!("{prefix}{path}")).await?;
            ops.extend(
                entries
                    .into_iter()
                    .map(|e| TxnOp::delete(e.key, Expect::Any)),
            );
        }
        self.kv().txn(ops).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use skiff_model::{Author, Cause, EnvState, Environment, StackKey, StackSpec};

    use crate::{MemKv, Store};

    #[tokio::test]
    async fn an_environment_is_created_once_changed_by_cas_and_deleted() {
        let store = Store::open(MemKv::new(), "t").await.unwrap();
        let alice = Environment::new("alice", Author::unknown(), 5);
        assert!(store.create_env(&alice).await.unwrap());
        assert!(!store.create_env(&alice).await.unwrap(), "exists already");
        let changed = store
            .update_env("alice", |e| {
                e.values.insert("A".into(), "1".into());
                Ok::<(), String>(())
            })
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(changed.values["A"], "1");
        // A refusal writes nothing.
        let refused = store
            .update_env("alice", |e| {
                e.state = EnvState::Down;
                Err("no".to_string())
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(refused, Err("no".to_string()));
        let kept = store.env("alice").await.unwrap().unwrap();
        assert_eq!((kept.state, kept.values.len()), (EnvState::Active, 1));
        assert!(
            store
                .update_env("bob", |_| Ok::<(), ()>(()))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(store.envs().await.unwrap().len(), 1);
        assert!(store.delete_env("alice").await.unwrap());
        assert!(!store.delete_env("alice").await.unwrap());
        assert!(store.env("alice").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn removing_a_stack_removes_its_records_and_no_other_stacks() {
        let store = Store::open(MemKv::new(), "t").await.unwrap();
        let a = StackKey::new("alice", "shop").unwrap();
        let b = StackKey::new("bob", "shop").unwrap();
        let release = |k: StackKey| {
            let store = store.clone();
            async move {
                let spec = StackSpec::default();
                let by = Author::unknown();
                store
                    .create_release(&k, spec, String::new(), 1, by, Cause::Up)
                    .await
                    .unwrap()
            }
        };
        for k in [&a, &b] {
            release(k.clone()).await;
            store
                .update_controls(k, |c| c.entry("web".into()).or_default().stopped = true)
                .await
                .unwrap();
        }
        // One environment's stacks, not another's whose name starts the same.
        let alice2 = StackKey::new("alice2", "shop").unwrap();
        release(alice2.clone()).await;
        let of_alice = store.env_stacks("alice").await.unwrap();
        assert_eq!(of_alice.len(), 1);
        assert_eq!(of_alice[0].stack, a);
        assert!(of_alice[0].controls["web"].stopped);
        store.remove_stack(&alice2).await.unwrap();
        store.remove_stack(&a).await.unwrap();
        let stacks = store.stacks().await.unwrap();
        assert_eq!(stacks.len(), 1);
        assert_eq!(stacks[0].stack, b);
        assert!(stacks[0].controls["web"].stopped);
        assert!(store.releases(&a).await.unwrap().is_empty());
        assert_eq!(store.releases(&b).await.unwrap().len(), 1);
        // Numbers start again for a stack made anew.
        assert_eq!(release(a).await.number, 1);
    }
}
