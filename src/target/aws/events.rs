//! CloudFormation stack events: which belong to the operation we started, whether it is over, and what
//! its root cause was. Pure logic on our own event model, so it is tested on recorded real streams
//! (moto only produces stack-level events).
//!
//! Facts this relies on (see `docs/aws.md`): `DescribeStackEvents` returns the whole history, newest
//! first; an operation is started by a stack-level `*_IN_PROGRESS` event; reasons are untidy and are
//! rendered trimmed, never parsed.

use aws_smithy_types::DateTime;

/// The resource type of the stack's own events.
pub const STACK_TYPE: &str = "AWS::CloudFormation::Stack";

/// Reasons that are consequences of another failure, not causes.
const CANCELLED_REASONS: &[&str] = &["Resource creation cancelled", "Resource update cancelled"];

#[derive(Debug, Clone, PartialEq)]
pub struct StackEvent {
    /// Opaque (several shapes exist).
    pub id: String,
    pub stack_id: String,
    pub stack_name: String,
    pub logical_id: String,
    /// `""` on a resource's first `CREATE_IN_PROGRESS`.
    pub physical_id: Option<String>,
    pub resource_type: String,
    pub status: String,
    pub reason: Option<String>,
    pub timestamp: DateTime,
    /// The `ClientRequestToken` of the call that started the operation, when it had one.
    pub token: Option<String>,
}

impl StackEvent {
    /// An event about the stack itself rather than one of its resources (a nested stack is a
    /// resource of type `AWS::CloudFormation::Stack` with another logical id).
    pub fn is_stack_level(&self) -> bool {
        self.resource_type == STACK_TYPE
            && (self.logical_id == self.stack_name
                || self.physical_id.as_deref() == Some(self.stack_id.as_str()))
    }

    /// The reason, trimmed, when there is a non-empty one.
    pub fn tidy_reason(&self) -> Option<&str> {
        self.reason.as_deref().map(str::trim).filter(|r| !r.is_empty())
    }

    /// `TaskDefinition CREATE_IN_PROGRESS` (or the stack's status alone): for progress lines.
    pub fn short(&self) -> String {
        if self.is_stack_level() {
            self.status.clone()
        } else {
            format!("{} {}", self.logical_id, self.status)
        }
    }

    /// `TaskDefinition (AWS::ECS::TaskDefinition) CREATE_FAILED: reason`.
    pub fn describe(&self) -> String {
        let what = if self.is_stack_level() {
            format!("stack {}", self.logical_id)
        } else {
            format!("{} ({})", self.logical_id, self.resource_type)
        };
        match self.tidy_reason() {
            Some(reason) => format!("{what} {}: {reason}", self.status),
            None => format!("{what} {}", self.status),
        }
    }
}

/// The kind of operation being watched: it decides which stack-level event starts it and which
/// terminal statuses mean success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A create or update (through a change set).
    Deploy,
    Delete,
    /// `ContinueUpdateRollback` on a stack in `UPDATE_ROLLBACK_FAILED`.
    ContinueRollback,
    /// Someone else's operation: any start, any end.
    Any,
}

impl OpKind {
    fn starts_with(self, status: &str) -> bool {
        match self {
            // A failed create with `--on-failure DELETE` goes on to DELETE_IN_PROGRESS inside the same
            // operation, so a deploy never starts at a delete.
            OpKind::Deploy => matches!(
                status,
                "CREATE_IN_PROGRESS" | "UPDATE_IN_PROGRESS" | "IMPORT_IN_PROGRESS"
            ),
            OpKind::Delete => status == "DELETE_IN_PROGRESS",
            OpKind::ContinueRollback => status == "UPDATE_ROLLBACK_IN_PROGRESS",
            OpKind::Any => matches!(
                status,
                "CREATE_IN_PROGRESS"
                    | "UPDATE_IN_PROGRESS"
                    | "IMPORT_IN_PROGRESS"
                    | "DELETE_IN_PROGRESS"
                    | "UPDATE_ROLLBACK_IN_PROGRESS"
            ),
        }
    }

    /// Whether a terminal stack status ends this kind of operation successfully.
    pub fn succeeded(self, status: &str) -> bool {
        match self {
            OpKind::Deploy => matches!(status, "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE"),
            OpKind::Delete => status == "DELETE_COMPLETE",
            OpKind::ContinueRollback => status == "UPDATE_ROLLBACK_COMPLETE",
            OpKind::Any => !is_failed_state(status),
        }
    }
}

/// A stack status from which no operation is running (`*_COMPLETE`, `*_FAILED`).
pub fn is_terminal(status: &str) -> bool {
    !status.ends_with("_IN_PROGRESS") && (status.ends_with("_COMPLETE") || status.ends_with("_FAILED"))
}

/// Terminal statuses that mean the last operation did not do what was asked.
pub fn is_failed_state(status: &str) -> bool {
    status.ends_with("_FAILED") || status.contains("ROLLBACK")
}

/// The events of one operation, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Operation {
    pub events: Vec<StackEvent>,
    /// The stack-level event that started it was seen (otherwise the history was cut short).
    pub found_start: bool,
}

impl Operation {
    /// The newest stack-level status of the operation, once it is terminal.
    pub fn terminal_status(&self) -> Option<&str> {
        self.events
            .iter()
            .rev()
            .find(|e| e.is_stack_level())
            .map(|e| e.status.as_str())
            .filter(|s| is_terminal(s))
    }

    pub fn latest(&self) -> Option<&StackEvent> {
        self.events.last()
    }

    pub fn started_at(&self) -> Option<DateTime> {
        self.events.first().map(|e| e.timestamp)
    }

    /// The root cause: the oldest `*_FAILED` resource events whose reason is not a cancellation (those
    /// are consequences). When no resource failed (moto reports stack-level events only, and some
    /// failures are the stack's own), the stack-level events that carry a reason, after the start.
    pub fn root_cause(&self) -> Vec<&StackEvent> {
        let resources: Vec<&StackEvent> = self
            .events
            .iter()
            .filter(|e| !e.is_stack_level() && e.status.ends_with("_FAILED"))
            .filter(|e| {
                e.tidy_reason()
                    .is_none_or(|r| !CANCELLED_REASONS.contains(&r.trim_end_matches('.')))
            })
            .collect();
        if !resources.is_empty() {
            return resources;
        }
        // The first event is the start ("User Initiated"): not a cause.
        self.events
            .iter()
            .enumerate()
            .filter(|(i, e)| !(*i == 0 && e.status.ends_with("_IN_PROGRESS")))
            .map(|(_, e)| e)
            .filter(|e| e.is_stack_level() && e.tidy_reason().is_some())
            .collect()
    }
}

/// Where the operation we are watching begins in a newest-first history.
#[derive(Debug, Clone, Default)]
pub struct Slice<'a> {
    /// The newest event that existed before our call (events up to and including it are not ours).
    pub after_event: Option<&'a str>,
    /// The `ClientRequestToken` we sent: events carrying another token belong to another operation.
    pub token: Option<&'a str>,
}

/// The events of the newest operation of `kind` in `newest_first`, oldest first.
///
/// Walks back from the newest event and stops at the first of: the event we saw before our call
/// (`after_event`, excluded), an event stamped with another operation's token (excluded), or the
/// stack-level event that starts an operation of `kind` (included).
pub fn operation(newest_first: &[StackEvent], kind: OpKind, slice: &Slice<'_>) -> Operation {
    let mut events = Vec::new();
    let mut found_start = false;
    for event in newest_first {
        if slice.after_event == Some(event.id.as_str()) {
            // Everything before our call is excluded, so the cursor is as good as a start.
            found_start = true;
            break;
        }
        if let (Some(ours), Some(theirs)) = (slice.token, event.token.as_deref())
            && ours != theirs
        {
            found_start = true;
            break;
        }
        events.push(event.clone());
        if event.is_stack_level() && kind.starts_with(&event.status) {
            found_start = true;
            break;
        }
    }
    events.reverse();
    Operation { events, found_start }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Recorded `describe-stack-events` output (CLI JSON) into our model.
    use super::*;
    use aws_smithy_types::date_time::Format;
    use serde_json::Value;

    /// CLI fixtures carry timestamps as ISO strings with `Z`, an offset, or no fraction, and ECS ones
    /// as epoch floats.
    pub fn timestamp(v: &Value) -> DateTime {
        match v {
            Value::Number(n) => DateTime::from_secs_f64(n.as_f64().expect("epoch seconds")),
            Value::String(s) => DateTime::from_str(s, Format::DateTimeWithOffset)
                .or_else(|_| DateTime::from_str(&s.replace(' ', "T"), Format::DateTimeWithOffset))
                .unwrap_or_else(|e| panic!("timestamp {s}: {e}")),
            other => panic!("not a timestamp: {other}"),
        }
    }

    fn text(v: &Value, key: &str) -> Option<String> {
        v.get(key).and_then(Value::as_str).map(str::to_owned)
    }

    pub fn stack_events(json: &str) -> Vec<StackEvent> {
        let doc: Value = serde_json::from_str(json).expect("fixture JSON");
        doc["StackEvents"]
            .as_array()
            .expect("StackEvents")
            .iter()
            .map(|e| StackEvent {
                id: text(e, "EventId").expect("EventId"),
                stack_id: text(e, "StackId").expect("StackId"),
                stack_name: text(e, "StackName").expect("StackName"),
                logical_id: text(e, "LogicalResourceId").expect("LogicalResourceId"),
                physical_id: text(e, "PhysicalResourceId"),
                resource_type: text(e, "ResourceType").expect("ResourceType"),
                status: text(e, "ResourceStatus").expect("ResourceStatus"),
                reason: text(e, "ResourceStatusReason"),
                timestamp: timestamp(&e["Timestamp"]),
                token: text(e, "ClientRequestToken"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::stack_events;
    use super::*;

    const CREATE_FAILED_DELETE: &str = include_str!(
        "../../../tests/fixtures/aws/cfn-describe-stack-events-create-failed-on-failure-delete.json"
    );
    const UPDATE_ROLLBACK: &str = include_str!(
        "../../../tests/fixtures/aws/cfn-describe-stack-events-update-failed-update-rollback-complete.json"
    );
    const CREATE_OK: &str = include_str!(
        "../../../tests/fixtures/aws/cfn-describe-stack-events-create-complete-custom-resources.json"
    );

    #[test]
    fn a_successful_create_is_one_operation_ending_in_create_complete() {
        let events = stack_events(CREATE_OK);
        let op = operation(&events, OpKind::Deploy, &Slice::default());
        assert!(op.found_start);
        assert_eq!(op.events.len(), events.len());
        assert_eq!(op.events[0].status, "CREATE_IN_PROGRESS");
        assert_eq!(op.terminal_status(), Some("CREATE_COMPLETE"));
        assert!(OpKind::Deploy.succeeded("CREATE_COMPLETE"));
        assert!(op.root_cause().is_empty());
    }

    #[test]
    fn a_failed_update_is_cut_from_the_whole_history_and_blames_the_resource() {
        let events = stack_events(UPDATE_ROLLBACK);
        let op = operation(&events, OpKind::Deploy, &Slice::default());
        // The history starts with the stack's create; the update is the newest operation.
        assert_eq!(op.events[0].status, "UPDATE_IN_PROGRESS");
        assert!(
            op.events
                .iter()
                .all(|e| e.status != "CREATE_COMPLETE" || !e.is_stack_level())
        );
        let terminal = op.terminal_status().expect("terminal");
        assert_eq!(terminal, "UPDATE_ROLLBACK_COMPLETE");
        assert!(!OpKind::Deploy.succeeded(terminal));

        let causes = op.root_cause();
        assert_eq!(causes.len(), 1);
        assert_eq!(
            causes[0].describe(),
            "AuthGrant (Custom::Authn_Grant) CREATE_FAILED: Failed to create resource. 404: No resource with identifier https://authn-cr-failure.com"
        );
    }

    #[test]
    fn a_failed_create_with_on_failure_delete_stays_one_operation() {
        let events = stack_events(CREATE_FAILED_DELETE);
        let op = operation(&events, OpKind::Deploy, &Slice::default());
        // DELETE_IN_PROGRESS ("Delete requested by user") is part of the failed create, not a new start.
        assert_eq!(op.events[0].status, "CREATE_IN_PROGRESS");
        assert_eq!(op.terminal_status(), Some("DELETE_COMPLETE"));
        assert!(!OpKind::Deploy.succeeded("DELETE_COMPLETE"));
        let causes: Vec<String> = op.root_cause().iter().map(|e| e.describe()).collect();
        assert_eq!(
            causes,
            vec![
                "AuthGrant (Custom::Authn_Grant) CREATE_FAILED: Failed to create resource. 404: No resource with identifier https://authn-cr-failure.com"
            ]
        );
    }

    #[test]
    fn the_cursor_excludes_everything_before_our_call() {
        let events = stack_events(UPDATE_ROLLBACK);
        // Pretend our call came after UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS.
        let cleanup = events
            .iter()
            .find(|e| e.status == "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS")
            .expect("cleanup event");
        let op = operation(
            &events,
            OpKind::Any,
            &Slice {
                after_event: Some(&cleanup.id),
                token: None,
            },
        );
        assert!(op.found_start);
        assert_eq!(op.events.len(), 5);
        assert_eq!(op.terminal_status(), Some("UPDATE_ROLLBACK_COMPLETE"));
        // Nothing new yet: not terminal.
        let newest = &events[0].id;
        let op = operation(
            &events,
            OpKind::Deploy,
            &Slice {
                after_event: Some(newest),
                token: None,
            },
        );
        assert!(op.events.is_empty());
        assert_eq!(op.terminal_status(), None);
    }

    #[test]
    fn events_of_another_token_end_the_operation() {
        let mut events = stack_events(UPDATE_ROLLBACK);
        let split = events
            .iter()
            .position(|e| e.status == "CREATE_COMPLETE")
            .expect("create");
        for (i, e) in events.iter_mut().enumerate() {
            e.token = Some(if i < split { "ours".into() } else { "theirs".into() });
        }
        let op = operation(
            &events,
            OpKind::Deploy,
            &Slice {
                after_event: None,
                token: Some("ours"),
            },
        );
        assert_eq!(op.events.len(), split);
        assert!(op.events.iter().all(|e| e.token.as_deref() == Some("ours")));
    }

    #[test]
    fn cancellations_are_consequences_not_causes() {
        let mut events = stack_events(UPDATE_ROLLBACK);
        // Add, newest first, a resource cancelled after the real failure (the shape real stacks show
        // when one of several parallel creates fails).
        let failed_at = events
            .iter()
            .position(|e| e.status == "CREATE_FAILED")
            .expect("failed");
        let mut cancelled = events[failed_at].clone();
        cancelled.id = "Other-CREATE_FAILED".into();
        cancelled.logical_id = "Other".into();
        cancelled.reason = Some("Resource creation cancelled".into());
        events.insert(failed_at, cancelled);
        let op = operation(&events, OpKind::Deploy, &Slice::default());
        let causes = op.root_cause();
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].logical_id, "AuthGrant");
    }

    #[test]
    fn stack_level_reasons_stand_in_when_no_resource_failed() {
        // moto's shape: stack-level events only.
        let events: Vec<StackEvent> = stack_events(UPDATE_ROLLBACK)
            .into_iter()
            .filter(StackEvent::is_stack_level)
            .collect();
        let op = operation(&events, OpKind::Deploy, &Slice::default());
        let causes: Vec<String> = op.root_cause().iter().map(|e| e.describe()).collect();
        // Trimmed (the recorded reason ends with a space).
        assert_eq!(
            causes,
            vec![
                "stack qa-cr-authn-failures UPDATE_ROLLBACK_IN_PROGRESS: The following resource(s) failed to create: [AuthGrant]."
            ]
        );
    }

    #[test]
    fn replaying_a_failed_update_poll_by_poll() {
        // What `up` sees polling a stack during the recorded failed update: each poll returns the
        // history so far, newest first; our call came after the stack's CREATE_COMPLETE.
        let history = stack_events(UPDATE_ROLLBACK);
        let created = history
            .iter()
            .position(|e| e.is_stack_level() && e.status == "CREATE_COMPLETE")
            .expect("create complete");
        let cursor = history[created].id.clone();
        let slice = Slice {
            after_event: Some(&cursor),
            token: None,
        };
        let mut lines = Vec::new();
        let mut terminal_at = None;
        for visible in 0..=created {
            // The first `visible` events of the update, on top of everything before it.
            let seen = &history[created - visible..];
            let op = operation(seen, OpKind::Deploy, &slice);
            assert!(op.found_start);
            if let Some(latest) = op.latest() {
                lines.push(latest.short());
            }
            if let Some(status) = op.terminal_status() {
                terminal_at.get_or_insert((visible, status.to_string()));
            }
        }
        lines.dedup();
        assert_eq!(
            lines,
            vec![
                "UPDATE_IN_PROGRESS",
                "AuthApplication CREATE_IN_PROGRESS",
                "AuthApplication CREATE_COMPLETE",
                "AuthGrant CREATE_IN_PROGRESS",
                "AuthGrant CREATE_FAILED",
                "UPDATE_ROLLBACK_IN_PROGRESS",
                "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
                "AuthGrant DELETE_IN_PROGRESS",
                "AuthGrant DELETE_COMPLETE",
                "AuthApplication DELETE_IN_PROGRESS",
                "AuthApplication DELETE_COMPLETE",
                "UPDATE_ROLLBACK_COMPLETE",
            ]
        );
        // Terminal only once the last event is visible: no early "done" on the way.
        assert_eq!(
            terminal_at,
            Some((created, "UPDATE_ROLLBACK_COMPLETE".to_string()))
        );
    }

    #[test]
    fn terminal_and_failed_states() {
        for s in [
            "CREATE_COMPLETE",
            "UPDATE_ROLLBACK_COMPLETE",
            "ROLLBACK_COMPLETE",
            "DELETE_FAILED",
        ] {
            assert!(is_terminal(s), "{s}");
        }
        for s in [
            "CREATE_IN_PROGRESS",
            "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS",
            "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
            "REVIEW_IN_PROGRESS",
        ] {
            assert!(!is_terminal(s), "{s}");
        }
        assert!(is_failed_state("UPDATE_ROLLBACK_COMPLETE"));
        assert!(is_failed_state("ROLLBACK_FAILED"));
        assert!(!is_failed_state("UPDATE_COMPLETE"));
    }

    #[test]
    fn recorded_timestamps_in_every_shape_parse() {
        use super::fixtures::timestamp;
        use serde_json::json;
        let a = timestamp(&json!("2020-10-22T14:44:38.938Z"));
        let b = timestamp(&json!("2026-09-20T18:22:48.176000+00:00"));
        let c = timestamp(&json!("2021-08-11T12:21:26.681000-04:00"));
        let d = timestamp(&json!(1449559137.768));
        let e = timestamp(&json!("2020-10-22T14:44:38Z"));
        assert!(a.secs() < b.secs());
        assert_eq!(c.secs(), 1_628_698_886);
        assert_eq!(d.secs(), 1_449_559_137);
        assert_eq!(e.secs(), a.secs());
    }
}
