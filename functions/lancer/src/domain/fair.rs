//! Fair share between tenants: which waiting task starts next. The waiting tenant served
//! least recently goes first, one task at a time, so one tenant's long queue never holds
//! back another's first task; no tenant holds more than its share of batch slots, nor more
//! services than its limit.

use std::collections::{HashMap, VecDeque};

/// The limits a queue enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairLimits {
    /// Batch tasks running at once, all tenants together.
    pub slots: usize,
    /// Batch tasks one tenant may run at once.
    pub per_tenant: usize,
    /// Services (tasks serving an endpoint) one tenant may run outside the batch slots.
    pub services_per_tenant: usize,
}

/// What a started task holds until its runner ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// One of the batch slots.
    Slot,
    /// A service's place beside the batch slots.
    Service,
}

/// Waiting tasks by tenant, each task by its `Id` (a `TaskId` in the dispatcher).
#[derive(Debug)]
pub struct FairQueue<Id> {
    limits: FairLimits,
    waiting: HashMap<String, VecDeque<Id>>,
    /// Tenants with waiting tasks, in the order they arrived.
    turn: VecDeque<String>,
    /// When each tenant last had a task started (a counter, not a clock).
    last_served: HashMap<String, u64>,
    tick: u64,
    slots: HashMap<String, usize>,
    services: HashMap<String, usize>,
}

impl<Id> FairQueue<Id> {
    /// An empty queue enforcing `limits`, with at least one slot in all and per tenant.
    pub fn new(limits: FairLimits) -> Self {
        Self {
            limits: FairLimits {
                slots: limits.slots.max(1),
                per_tenant: limits.per_tenant.max(1),
                ..limits
            },
            waiting: HashMap::new(),
            turn: VecDeque::new(),
            last_served: HashMap::new(),
            tick: 0,
            slots: HashMap::new(),
            services: HashMap::new(),
        }
    }

    /// Queues a task behind the tenant's earlier ones.
    pub fn push(&mut self, tenant: &str, id: Id) {
        let queue = self.waiting.entry(tenant.to_owned()).or_default();
        queue.push_back(id);
        if !self.turn.iter().any(|t| t == tenant) {
            self.turn.push_back(tenant.to_owned());
        }
    }

    /// The next task to start, as (tenant, id), with a batch slot taken for it; `None` when
    /// every slot is in use or every waiting tenant is at its share.
    pub fn start_next(&mut self) -> Option<(String, Id)> {
        if self.slots.values().sum::<usize>() >= self.limits.slots {
            return None;
        }
        let (position, _) = self
            .turn
            .iter()
            .enumerate()
            .filter(|(_, tenant)| {
                self.slots.get(*tenant).copied().unwrap_or(0) < self.limits.per_tenant
            })
            .min_by_key(|(position, tenant)| {
                (
                    self.last_served.get(*tenant).copied().unwrap_or(0),
                    *position,
                )
            })?;
        let tenant = self.turn.remove(position)?;
        let queue = self.waiting.get_mut(&tenant)?;
        let id = queue.pop_front()?;
        if queue.is_empty() {
            self.waiting.remove(&tenant);
        } else {
            self.turn.push_back(tenant.clone());
        }
        self.tick += 1;
        self.last_served.insert(tenant.clone(), self.tick);
        *self.slots.entry(tenant.clone()).or_default() += 1;
        Some((tenant, id))
    }

    /// A started task began serving: it gives its batch slot back if the tenant has room
    /// for another service, and keeps it otherwise. What it holds now.
    pub fn became_service(&mut self, tenant: &str) -> Held {
        let services = self.services.entry(tenant.to_owned()).or_default();
        if *services >= self.limits.services_per_tenant {
            return Held::Slot;
        }
        *services += 1;
        release(&mut self.slots, tenant);
        Held::Service
    }

    /// A started task's runner ended: what it held is free again.
    pub fn finished(&mut self, tenant: &str, held: Held) {
        match held {
            Held::Slot => release(&mut self.slots, tenant),
            Held::Service => release(&mut self.services, tenant),
        }
    }
}

fn release(counts: &mut HashMap<String, usize>, tenant: &str) {
    if let Some(count) = counts.get_mut(tenant) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(slots: usize, per_tenant: usize, services: usize) -> FairQueue<String> {
        FairQueue::new(FairLimits {
            slots,
            per_tenant,
            services_per_tenant: services,
        })
    }

    fn starts(queue: &mut FairQueue<String>) -> Vec<String> {
        std::iter::from_fn(|| queue.start_next().map(|(_, id)| id)).collect()
    }

    #[test]
    fn tenants_take_turns_whatever_the_length_of_their_queues() {
        let mut queue = queue(1, 1, 0);
        for n in 1..=4 {
            queue.push("acme", format!("a{n}"));
        }
        queue.push("other", "o1".into());
        let mut order = Vec::new();
        while let Some((tenant, id)) = queue.start_next() {
            order.push(id);
            queue.finished(&tenant, Held::Slot);
        }
        assert_eq!(order, ["a1", "o1", "a2", "a3", "a4"]);
    }

    #[test]
    fn a_tenant_just_served_waits_behind_one_that_was_not() {
        let mut queue = queue(1, 1, 0);
        queue.push("acme", "a1".into());
        let (tenant, first) = queue.start_next().expect("a slot is free");
        for n in 2..=4 {
            queue.push("acme", format!("a{n}"));
        }
        queue.push("other", "o1".into());
        queue.finished(&tenant, Held::Slot);
        assert_eq!(first, "a1");
        assert_eq!(queue.start_next().map(|(_, id)| id).as_deref(), Some("o1"));
    }

    #[test]
    fn no_tenant_holds_more_than_its_share_of_the_slots() {
        let mut queue = queue(3, 1, 0);
        for n in 1..=3 {
            queue.push("acme", format!("a{n}"));
        }
        queue.push("other", "o1".into());
        assert_eq!(
            starts(&mut queue),
            ["a1", "o1"],
            "acme waits for its own slot"
        );
        queue.finished("acme", Held::Slot);
        assert_eq!(starts(&mut queue), ["a2"]);
    }

    #[test]
    fn services_give_their_slot_back_only_within_the_tenants_service_limit() {
        let mut queue = queue(1, 1, 1);
        for id in ["s1", "s2", "batch"] {
            queue.push("acme", id.into());
        }
        assert_eq!(starts(&mut queue), ["s1"]);
        assert_eq!(queue.became_service("acme"), Held::Service);
        assert_eq!(
            starts(&mut queue),
            ["s2"],
            "the first service freed its slot"
        );
        assert_eq!(
            queue.became_service("acme"),
            Held::Slot,
            "over the service limit"
        );
        assert!(
            starts(&mut queue).is_empty(),
            "the second service keeps the slot"
        );
        queue.finished("acme", Held::Service);
        queue.finished("acme", Held::Slot);
        assert_eq!(starts(&mut queue), ["batch"]);
    }
}
