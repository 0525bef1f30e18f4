//! Shared helpers: in-memory devices and a toy hub that orders events.

use parley_crypto::{
    DeviceId, DeviceIdentity, Group, PendingCommit, Provider, Received, UserId,
    generate_key_packages, validate_key_package,
};

pub(crate) type MemProvider = Provider<openmls_rust_crypto::MemoryStorage>;

pub(crate) fn identity(user: &str, device: &str) -> DeviceIdentity {
    DeviceIdentity::generate(
        UserId::try_from(format!("@{user}:chat.example.org").as_str()).unwrap(),
        DeviceId::try_from(device).unwrap(),
    )
}

/// One event in the hub's total order.
#[derive(Clone)]
pub(crate) struct Event {
    pub(crate) from: String,
    pub(crate) bytes: Vec<u8>,
}

/// The hub: assigns `seq`, accepts exactly one Commit per epoch.
#[derive(Default)]
pub(crate) struct Hub {
    pub(crate) epoch: u64,
    pub(crate) log: Vec<Event>,
}

impl Hub {
    /// Compare-and-set on the epoch; `Err(current_epoch)` is the 409.
    pub(crate) fn submit_commit(&mut self, from: &str, pc: &PendingCommit) -> Result<(), u64> {
        if pc.epoch != self.epoch {
            return Err(self.epoch);
        }
        self.epoch += 1;
        self.log.push(Event {
            from: from.to_owned(),
            bytes: pc.commit.clone(),
        });
        Ok(())
    }

    pub(crate) fn send(&mut self, from: &str, bytes: Vec<u8>) {
        self.log.push(Event {
            from: from.to_owned(),
            bytes,
        });
    }
}

pub(crate) struct Device {
    pub(crate) name: String,
    pub(crate) identity: DeviceIdentity,
    pub(crate) provider: MemProvider,
    pub(crate) group: Option<Group>,
    /// Next hub event to process.
    pub(crate) cursor: usize,
}

impl Device {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            identity: identity(name, &format!("{}DEV", name.to_uppercase())),
            provider: Provider::new(openmls_rust_crypto::MemoryStorage::default()),
            group: None,
            cursor: 0,
        }
    }

    pub(crate) fn group(&mut self) -> &mut Group {
        self.group.as_mut().expect("device has no group")
    }

    pub(crate) fn create_group(&mut self, hub: &Hub, id: &[u8]) {
        self.group = Some(Group::create(&self.provider, &self.identity, id).unwrap());
        self.cursor = hub.log.len();
    }

    /// A fresh one-time KeyPackage, validated as another device would.
    pub(crate) fn key_package(&self) -> parley_crypto::ValidatedKeyPackage {
        let batch = generate_key_packages(&self.provider, &self.identity, 1).unwrap();
        validate_key_package(&self.provider, &batch.one_time[0]).unwrap()
    }

    pub(crate) fn join(&mut self, hub: &Hub, welcome: &[u8]) {
        self.group = Some(Group::join(&self.provider, welcome).unwrap());
        self.cursor = hub.log.len();
    }

    /// Encrypts and sends an application message through the hub.
    pub(crate) fn send(&mut self, hub: &mut Hub, text: &str) {
        let (provider, identity) = (&self.provider, &self.identity);
        let bytes = self
            .group
            .as_mut()
            .unwrap()
            .encrypt(provider, identity, text.as_bytes())
            .unwrap();
        hub.send(&self.name, bytes);
    }

    /// Processes every hub event this device has not seen (skipping its own).
    pub(crate) fn catch_up(&mut self, hub: &Hub) -> Vec<Received> {
        let mut out = Vec::new();
        while self.cursor < hub.log.len() {
            let ev = hub.log[self.cursor].clone();
            self.cursor += 1;
            if ev.from == self.name {
                continue;
            }
            let provider = &self.provider;
            let r = self
                .group
                .as_mut()
                .unwrap()
                .process(provider, &ev.bytes)
                .unwrap_or_else(|e| {
                    panic!("{} processing event {}: {e}", self.name, self.cursor - 1)
                });
            out.push(r);
        }
        out
    }

    /// Commits through the hub: submit, and confirm on acceptance.
    pub(crate) fn commit(&mut self, hub: &mut Hub, pc: PendingCommit) -> Result<(), u64> {
        hub.submit_commit(&self.name, &pc)?;
        let provider = &self.provider;
        self.group
            .as_mut()
            .unwrap()
            .confirm_pending_commit(provider)
            .unwrap();
        Ok(())
    }

    /// Adds devices: commit, hub, confirm, and have them join.
    pub(crate) fn add(&mut self, hub: &mut Hub, others: &mut [&mut Device]) {
        let kps: Vec<_> = others.iter().map(|d| d.key_package()).collect();
        let (provider, identity) = (&self.provider, &self.identity);
        let pc = self
            .group
            .as_mut()
            .unwrap()
            .commit_add(provider, identity, &kps)
            .unwrap();
        let welcome = pc.welcome.clone().unwrap();
        self.commit(hub, pc).unwrap();
        for d in others.iter_mut() {
            d.join(hub, &welcome);
        }
    }

    pub(crate) fn texts(received: &[Received]) -> Vec<String> {
        received
            .iter()
            .filter_map(|r| match r {
                Received::Application { plaintext, .. } => {
                    Some(String::from_utf8(plaintext.clone()).unwrap())
                }
                _ => None,
            })
            .collect()
    }
}
