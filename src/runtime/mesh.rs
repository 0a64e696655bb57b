//! Everything that crosses cores: one message enum, bounded crossbeam channels, one doorbell per
//! shard.
//!
//! Each shard has two inboxes, both bounded and both ringing the shard's [`Doorbell`] (an
//! eventfd its engine watches):
//! - the control inbox ([`CONTROL_CHANNEL_CAPACITY`]), written by the control-plane threads
//!   through the [`ControlPlane`]: drains from the signal thread, and from the model manager each
//!   newly published generation of the registry and the answers to repository calls; statistics
//!   traffic can never crowd them out;
//! - the mesh inbox ([`MESH_CHANNEL_CAPACITY`] per peer), written by peer shards; only snapshot
//!   gathers (statistics, metrics) travel there.
//!
//! Nothing here is on the request path, and nothing here ever waits: every send is a
//! `try_send`, so two shards can never deadlock replying to each other, and a stalled or exited
//! peer costs a gather one [`GATHER_TIMEOUT`] at most. A shard runs at most
//! [`MAX_CONCURRENT_GATHERS`] gathers at once; beyond that a gather is refused with 503.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel;

use super::engine::Doorbell;
use crate::error::ApiError;
use crate::metrics::ShardMetricsSnapshot;
use crate::service::{Gather, RepositoryCall, ServiceState};
use crate::stats::StatsSnapshot;

/// Capacity of a shard's mesh inbox, per peer.
pub const MESH_CHANNEL_CAPACITY: usize = 64;
/// Gathers one shard runs at once; more are refused (503) until one ends.
pub const MAX_CONCURRENT_GATHERS: usize = 8;
/// How long a gather waits for every peer.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(2);
/// Capacity of each shard's control inbox.
pub const CONTROL_CHANNEL_CAPACITY: usize = 64;
/// How long a repository call (a load, say) may take before its client is told to look at the
/// index instead.
pub const REPOSITORY_CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Repository calls one shard waits on at once; more are refused (503).
pub const MAX_CONCURRENT_CALLS: usize = 16;

/// Every message that crosses cores.
#[derive(Debug)]
pub enum ShardMsg {
    /// Control thread → every shard, on SIGTERM/SIGINT: stop accepting, turn readiness to 503,
    /// finish in-flight requests, and exit by `deadline`.
    Drain {
        /// When the shard stops waiting for in-flight requests.
        deadline: Instant,
    },
    /// Shard → peer: send me your snapshot of `what`.
    SnapshotRequest {
        /// The asking shard's id.
        from: usize,
        /// Matches the reply to the gather.
        ticket: u64,
        /// Statistics or metrics.
        what: Gather,
    },
    /// Peer → asking shard: its snapshot.
    SnapshotReply {
        /// From the request.
        ticket: u64,
        /// The peer's numbers.
        snapshot: Snapshot,
    },
    /// Model manager → every shard: serve this generation from now on (switching at a batch
    /// boundary), then say so on `ack` with the shard's id.
    Publish {
        /// The new generation.
        state: Arc<ServiceState>,
        /// Where the shard acknowledges.
        ack: channel::Sender<usize>,
    },
    /// Model manager → asking shard: the answer to repository call `ticket` (a JSON body).
    RepositoryReply {
        /// From the call.
        ticket: u64,
        /// The body to answer 200 with, or the error.
        result: Result<Vec<u8>, ApiError>,
    },
}

/// One shard's numbers, as a gather collects them.
#[derive(Debug)]
pub enum Snapshot {
    /// Triton statistics.
    Stats(StatsSnapshot),
    /// Prometheus metrics and gauges.
    Metrics(ShardMetricsSnapshot),
}

/// One end of a shard's inbox: a bounded sender and the shard's doorbell.
#[derive(Clone)]
pub struct Mailbox {
    tx: channel::Sender<ShardMsg>,
    bell: Arc<Doorbell>,
}

impl Mailbox {
    /// Sends without waiting and wakes the shard; false if the inbox is full or its shard gone.
    pub fn try_send(&self, msg: ShardMsg) -> bool {
        let sent = self.tx.try_send(msg).is_ok();
        if sent {
            self.bell.ring();
        }
        sent
    }

    /// Sends, waiting up to `timeout` for room (control-plane threads only, never a shard), and
    /// wakes the shard; false if it could not.
    pub fn send_timeout(&self, msg: ShardMsg, timeout: Duration) -> bool {
        let sent = self.tx.send_timeout(msg, timeout).is_ok();
        if sent {
            self.bell.ring();
        }
        sent
    }
}

/// What one shard receives: its doorbell and both inboxes.
pub(crate) struct Inbox {
    /// Rung by every sender.
    pub bell: Arc<Doorbell>,
    /// From the control thread.
    pub control: channel::Receiver<ShardMsg>,
    /// From peer shards.
    pub mesh: channel::Receiver<ShardMsg>,
}

/// The control thread's handle on every shard.
#[derive(Clone)]
pub struct ControlPlane {
    shards: Vec<Mailbox>,
}

impl ControlPlane {
    /// Every shard's control mailbox, by shard id.
    pub fn shards(&self) -> &[Mailbox] {
        &self.shards
    }

    /// Tells every shard to drain by `deadline`.
    pub fn drain(&self, deadline: Instant) {
        for s in &self.shards {
            // The inbox also carries the model manager's messages: wait (briefly) for room
            // rather than lose the drain.
            s.send_timeout(ShardMsg::Drain { deadline }, Duration::from_secs(1));
        }
    }
}

/// Builds the doorbells and channels of `shards` shards: the control plane, each shard's
/// [`Inbox`], and the mesh senders every shard gets (indexed by shard id).
pub(crate) fn wire(shards: usize) -> std::io::Result<(ControlPlane, Vec<Inbox>, Vec<Mailbox>)> {
    let mut control = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    let mut peers = Vec::with_capacity(shards);
    for _ in 0..shards {
        let bell = Arc::new(Doorbell::new()?);
        let (ctx, crx) = channel::bounded(CONTROL_CHANNEL_CAPACITY);
        let (mtx, mrx) = channel::bounded(MESH_CHANNEL_CAPACITY * shards.max(1));
        control.push(Mailbox {
            tx: ctx,
            bell: bell.clone(),
        });
        peers.push(Mailbox {
            tx: mtx,
            bell: bell.clone(),
        });
        inboxes.push(Inbox {
            bell,
            control: crx,
            mesh: mrx,
        });
    }
    Ok((ControlPlane { shards: control }, inboxes, peers))
}

/// A gather in progress.
struct PendingGather {
    /// The connection waiting for it.
    conn: usize,
    snapshots: Vec<Snapshot>,
    /// Replies still missing.
    missing: usize,
    deadline: Instant,
    /// Set when it can be answered: every reply came, or the deadline passed.
    result: Option<Result<(), ApiError>>,
}

/// How [`Mesh::start_gather`] went.
pub(crate) enum GatherStart {
    /// No peers: here is every snapshot (this shard's).
    Done(Vec<Snapshot>),
    /// Asked; the connection is resumed when the replies are in (or the deadline passes).
    Pending(u64),
}

/// A repository call waiting for the model manager.
struct PendingCall {
    conn: usize,
    deadline: Instant,
    result: Option<Result<Vec<u8>, ApiError>>,
}

/// A shard's end of the mesh: its peers' mailboxes, its gathers in progress, and its calls to
/// the model manager.
pub(crate) struct Mesh {
    me: usize,
    peers: Vec<Mailbox>,
    inbox: channel::Receiver<ShardMsg>,
    gathers: HashMap<u64, PendingGather>,
    next_ticket: u64,
    manager: Option<channel::Sender<ManagerMsg>>,
    calls: HashMap<u64, PendingCall>,
}

/// A repository call on its way to the model manager.
#[derive(Debug)]
pub struct ManagerMsg {
    /// The asking shard (the answer goes to its control inbox).
    pub from: usize,
    /// Matches the answer to the call.
    pub ticket: u64,
    /// What is asked.
    pub call: RepositoryCall,
}

impl Mesh {
    /// Shard `me`'s end, with every shard's mailbox (its own included) and its inbox.
    pub(crate) fn new(me: usize, peers: Vec<Mailbox>, inbox: channel::Receiver<ShardMsg>) -> Self {
        Mesh {
            me,
            peers,
            inbox,
            gathers: HashMap::new(),
            next_ticket: 0,
            manager: None,
            calls: HashMap::new(),
        }
    }

    /// Connects this shard to the model manager.
    pub(crate) fn with_manager(mut self, manager: channel::Sender<ManagerMsg>) -> Self {
        self.manager = Some(manager);
        self
    }

    /// Sends `call` to the model manager for connection `conn`; the connection is resumed with
    /// the answer (or when [`REPOSITORY_CALL_TIMEOUT`] passes).
    pub(crate) fn start_call(
        &mut self,
        conn: usize,
        call: RepositoryCall,
        now: Instant,
    ) -> Result<u64, ApiError> {
        let Some(manager) = &self.manager else {
            return Err(ApiError::unavailable("this server runs no model manager"));
        };
        if self.calls.len() >= MAX_CONCURRENT_CALLS {
            return Err(ApiError::unavailable(
                "too many repository calls are in progress on this shard; retry",
            ));
        }
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let msg = ManagerMsg {
            from: self.me,
            ticket,
            call,
        };
        if manager.try_send(msg).is_err() {
            return Err(ApiError::unavailable(
                "the model manager is busy with other calls; retry",
            ));
        }
        self.calls.insert(
            ticket,
            PendingCall {
                conn,
                deadline: now + REPOSITORY_CALL_TIMEOUT,
                result: None,
            },
        );
        Ok(ticket)
    }

    /// Takes the manager's answer; pushes the waiting connection to `ready`.
    pub(crate) fn on_call_reply(
        &mut self,
        ticket: u64,
        result: Result<Vec<u8>, ApiError>,
        ready: &mut Vec<usize>,
    ) {
        if let Some(c) = self.calls.get_mut(&ticket) {
            if c.result.is_none() {
                c.result = Some(result);
                ready.push(c.conn);
            }
        }
    }

    /// A finished call's answer.
    pub(crate) fn take_call(&mut self, ticket: u64) -> Result<Vec<u8>, ApiError> {
        match self.calls.remove(&ticket) {
            Some(PendingCall {
                result: Some(r), ..
            }) => r,
            _ => Err(ApiError::internal("a call was answered before it ended")),
        }
    }

    /// The next message from a peer, if any.
    pub(crate) fn try_recv(&self) -> Option<ShardMsg> {
        self.inbox.try_recv().ok()
    }

    /// Answers a peer's snapshot request. If the asker's inbox is full or the asker exited, the
    /// reply is dropped: its gather times out rather than anyone waiting here.
    pub(crate) fn reply(&self, to: usize, ticket: u64, snapshot: Snapshot) {
        if let Some(peer) = self.peers.get(to) {
            peer.try_send(ShardMsg::SnapshotReply { ticket, snapshot });
        }
    }

    /// Starts gathering `what` from every peer for connection `conn`; `local` is this shard's.
    pub(crate) fn start_gather(
        &mut self,
        conn: usize,
        what: Gather,
        local: Snapshot,
        now: Instant,
    ) -> Result<GatherStart, ApiError> {
        let peers = self.peers.len().saturating_sub(1);
        if peers == 0 {
            return Ok(GatherStart::Done(vec![local]));
        }
        if self.gathers.len() >= MAX_CONCURRENT_GATHERS {
            return Err(ApiError::unavailable(
                "too many statistics requests are in progress on this shard; retry",
            ));
        }
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        for (p, peer) in self.peers.iter().enumerate() {
            if p == self.me {
                continue;
            }
            let asked = peer.try_send(ShardMsg::SnapshotRequest {
                from: self.me,
                ticket,
                what,
            });
            if !asked {
                return Err(ApiError::unavailable(
                    "a shard is busy or shutting down; retry",
                ));
            }
        }
        let mut snapshots = Vec::with_capacity(peers + 1);
        snapshots.push(local);
        self.gathers.insert(
            ticket,
            PendingGather {
                conn,
                snapshots,
                missing: peers,
                deadline: now + GATHER_TIMEOUT,
                result: None,
            },
        );
        Ok(GatherStart::Pending(ticket))
    }

    /// Takes a peer's reply; pushes the waiting connection to `ready` when its gather is
    /// complete. A late reply to a gather that timed out finds no entry and is dropped.
    pub(crate) fn on_reply(&mut self, ticket: u64, snapshot: Snapshot, ready: &mut Vec<usize>) {
        let Some(g) = self.gathers.get_mut(&ticket) else {
            return;
        };
        if g.result.is_some() {
            return;
        }
        g.snapshots.push(snapshot);
        g.missing -= 1;
        if g.missing == 0 {
            g.result = Some(Ok(()));
            ready.push(g.conn);
        }
    }

    /// Ends the gathers and calls whose deadline passed (their connections are pushed to
    /// `ready`).
    pub(crate) fn expire(&mut self, now: Instant, ready: &mut Vec<usize>) {
        for c in self.calls.values_mut() {
            if c.result.is_none() && now >= c.deadline {
                c.result = Some(Err(ApiError::unavailable(
                    "the model manager did not answer in time; the call may still complete: \
                     see POST /v2/repository/index",
                )));
                ready.push(c.conn);
            }
        }
        for g in self.gathers.values_mut() {
            if g.result.is_none() && now >= g.deadline {
                g.result = Some(Err(ApiError::unavailable(
                    "a shard did not report its numbers in time",
                )));
                ready.push(g.conn);
            }
        }
    }

    /// The earliest deadline of a gather still waiting.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let gathers = self
            .gathers
            .values()
            .filter(|g| g.result.is_none())
            .map(|g| g.deadline);
        let calls = self
            .calls
            .values()
            .filter(|c| c.result.is_none())
            .map(|c| c.deadline);
        gathers.chain(calls).min()
    }

    /// A finished gather's snapshots (this shard's first), or why it failed.
    pub(crate) fn take(&mut self, ticket: u64) -> Result<Vec<Snapshot>, ApiError> {
        match self.gathers.remove(&ticket) {
            Some(PendingGather {
                result: Some(Ok(())),
                snapshots,
                ..
            }) => Ok(snapshots),
            Some(PendingGather {
                result: Some(Err(e)),
                ..
            }) => Err(e),
            _ => Err(ApiError::internal("a gather was answered before it ended")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Snapshot {
        Snapshot::Stats(StatsSnapshot::default())
    }

    #[test]
    fn gather_completes_with_every_reply_and_times_out_without() {
        let (_, inboxes, peers) = wire(3).unwrap();
        let mut mesh = Mesh::new(0, peers, inboxes[0].mesh.clone());
        let now = Instant::now();
        let what = Gather::Stats { only: None };
        let GatherStart::Pending(t) = mesh.start_gather(7, what, stats(), now).unwrap() else {
            panic!("two peers: pending");
        };
        // Both peers were asked.
        for inbox in &inboxes[1..] {
            assert!(matches!(
                inbox.mesh.try_recv(),
                Ok(ShardMsg::SnapshotRequest { from: 0, .. })
            ));
        }
        let mut ready = Vec::new();
        mesh.on_reply(t, stats(), &mut ready);
        assert!(ready.is_empty());
        mesh.on_reply(t, stats(), &mut ready);
        assert_eq!(ready, [7]);
        assert_eq!(mesh.take(t).unwrap().len(), 3);

        let GatherStart::Pending(t) = mesh.start_gather(8, what, stats(), now).unwrap() else {
            panic!("pending");
        };
        ready.clear();
        mesh.expire(now + GATHER_TIMEOUT / 2, &mut ready);
        assert!(ready.is_empty());
        mesh.expire(now + GATHER_TIMEOUT, &mut ready);
        assert_eq!(ready, [8]);
        assert!(mesh.take(t).is_err());
        // A late reply is dropped.
        mesh.on_reply(t, stats(), &mut ready);
        assert_eq!(ready, [8]);
    }

    #[test]
    fn concurrent_gathers_are_bounded() {
        let (_, inboxes, peers) = wire(2).unwrap();
        let mut mesh = Mesh::new(0, peers, inboxes[0].mesh.clone());
        let now = Instant::now();
        for c in 0..MAX_CONCURRENT_GATHERS {
            assert!(mesh.start_gather(c, Gather::Metrics, stats(), now).is_ok());
        }
        assert!(mesh
            .start_gather(99, Gather::Metrics, stats(), now)
            .is_err());
    }
}
