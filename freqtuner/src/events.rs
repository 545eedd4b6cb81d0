//! Device failures as Kubernetes Events on the node's NodeFrequencies, so
//! `kubectl describe nf <node>` and event exporters show them. The
//! actuator's reporter decides when a failure is news (a device's first
//! error or a change of it, [`crate::actuator::Notice`]); this module only
//! delivers those notices. Like the status, delivery happens off the agent
//! loop: the loop hands a notice to a bounded queue without waiting, and a
//! task publishes it through kube's [`Recorder`] (which patches an Event
//! that repeats, same device and reason, instead of creating another; the
//! patch keeps the first note), each call bounded by a timeout. A full queue drops the notice: the status and the log carry
//! it too.

use std::time::Duration;

use climatik_api::names;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::actuator::Notice;

/// Notices waiting for the API server at most; far more than a node has
/// devices failing at once.
const QUEUE: usize = 64;

/// Longest Event note the API server accepts (events.k8s.io/v1: 1 kB).
const MAX_NOTE_BYTES: usize = 1024;

/// The Event's action: setting the device. It names the device because
/// the Recorder tells Events apart by regarding, reason and action, not by
/// note: with one action for all, every device's failure would be counted
/// as a repeat of the first one's Event.
pub fn action(notice: &Notice) -> String {
    format!("Set {}", notice.device)
}

/// The note of `notice`: the device, then its error, within the API
/// server's limit.
pub fn note(notice: &Notice) -> String {
    let mut note = format!("{}: {}", notice.device, notice.error);
    if note.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES - '…'.len_utf8();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

/// The agent loop's end of the queue.
pub struct EventHandle {
    queue: mpsc::Sender<(ObjectReference, Notice)>,
    task: JoinHandle<()>,
}

impl EventHandle {
    /// Starts the publishing task for the agent on `node`; each API call
    /// is bounded by `timeout`.
    pub fn spawn(client: kube::Client, node: &str, timeout: Duration) -> Self {
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: names::MANAGER_FREQTUNER.to_string(),
                instance: Some(node.to_string()),
            },
        );
        let (queue, mut notices) = mpsc::channel::<(ObjectReference, Notice)>(QUEUE);
        let task = tokio::spawn(async move {
            while let Some((regarding, notice)) = notices.recv().await {
                let event = Event {
                    type_: EventType::Warning,
                    reason: notice.reason.to_string(),
                    note: Some(note(&notice)),
                    action: action(&notice),
                    secondary: None,
                };
                match tokio::time::timeout(timeout, recorder.publish(&event, &regarding)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, device = %notice.device, "publishing an Event");
                    }
                    Err(_) => {
                        tracing::warn!(?timeout, device = %notice.device, "publishing an Event timed out");
                    }
                }
            }
        });
        Self { queue, task }
    }

    /// Queues `notice` about the object `regarding`, without waiting.
    pub fn publish(&self, regarding: &ObjectReference, notice: Notice) {
        if let Err(e) = self.queue.try_send((regarding.clone(), notice)) {
            tracing::debug!(error = %e, "dropped an Event: the queue is full");
        }
    }
}

impl Drop for EventHandle {
    fn drop(&mut self) {
        // Events are news only while the agent runs; what a stopping agent
        // has not delivered is in its log.
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_is_cut_to_the_api_servers_limit_on_a_char_boundary() {
        let notice = Notice {
            device: "gpu GPU-a".into(),
            reason: "ActuationFailed",
            error: "é".repeat(2 * MAX_NOTE_BYTES),
        };
        let text = note(&notice);
        assert!(text.len() <= MAX_NOTE_BYTES, "{}", text.len());
        assert!(text.starts_with("gpu GPU-a: é") && text.ends_with('…'));

        let short = Notice {
            error: "nvml: not permitted".into(),
            ..notice
        };
        assert_eq!(note(&short), "gpu GPU-a: nvml: not permitted");
    }
}
