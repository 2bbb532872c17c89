//! CloudFormation calls, mapped into our model: stacks found by tag, change sets, events, deletes.
//! Every call backs off on throttling and is classified into an [`AwsError`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_cloudformation::Client;
use aws_sdk_cloudformation::types::{Capability, ChangeSetType, Parameter, Tag};
use tokio_util::sync::CancellationToken;

use super::changes::{Detail, ResourceChange};
use super::error::{AwsError, Backoff, CallSite, classify, with_backoff};
use super::events::StackEvent;

/// Tag naming the fleet a stack belongs to.
pub const TAG_FLEET: &str = "thespctl:fleet";
/// Tag naming the thespian of a service stack; [`ENV_THESPIAN`] on the environment stack.
pub const TAG_THESPIAN: &str = "thespctl:thespian";
/// `thespctl:thespian` of the environment stack (a thespian name is a DNS label, never `-`).
pub const ENV_THESPIAN: &str = "-";

/// A stack as `DescribeStacks` reports it.
#[derive(Debug, Clone, Default)]
pub struct StackInfo {
    /// The stack ARN: works for calls after the stack is deleted, unlike its name.
    pub id: String,
    pub name: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub parameters: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
}

impl StackInfo {
    pub fn fleet(&self) -> Option<&str> {
        self.tags.get(TAG_FLEET).map(String::as_str)
    }

    pub fn thespian(&self) -> Option<&str> {
        self.tags.get(TAG_THESPIAN).map(String::as_str)
    }
}

/// A change set's state and (for `plan`) its resource changes.
#[derive(Debug, Clone, Default)]
pub struct ChangeSetInfo {
    /// `CREATE_PENDING`, `CREATE_IN_PROGRESS`, `CREATE_COMPLETE`, `FAILED`, ...
    pub status: String,
    pub status_reason: Option<String>,
    pub changes: Vec<ResourceChange>,
}

impl ChangeSetInfo {
    pub fn is_settled(&self) -> bool {
        matches!(
            self.status.as_str(),
            "CREATE_COMPLETE" | "FAILED" | "DELETE_COMPLETE" | "DELETE_FAILED"
        )
    }

    /// A change set with nothing to do. CloudFormation says so only in the status reason of a
    /// `FAILED` change set (there is no code), so this is the one place a reason's text decides.
    pub fn has_no_changes(&self) -> bool {
        self.status == "FAILED"
            && self.status_reason.as_deref().is_some_and(|r| {
                r.contains("didn't contain changes") || r.contains("No updates are to be performed")
            })
    }
}

/// What a stack is made from.
#[derive(Debug, Clone)]
pub struct StackSpec {
    pub name: String,
    /// `None` for the environment stack.
    pub thespian: Option<String>,
    pub template: String,
    pub parameters: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

/// CloudFormation calls of one run.
#[derive(Debug, Clone)]
pub struct Cfn {
    pub client: Client,
    pub region: String,
    pub profile: Option<String>,
    pub cancel: CancellationToken,
    pub backoff: Backoff,
}

impl Cfn {
    fn site(&self, operation: &'static str, stack: &str) -> CallSite<'_> {
        CallSite::new(operation, &self.region)
            .on(format!("stack {stack}"))
            .profile(self.profile.as_deref())
    }

    /// Every live stack of the account and region (deleted ones are not listed), paginated.
    pub async fn all_stacks(&self) -> Result<Vec<StackInfo>, AwsError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let site =
                CallSite::new("cloudformation:DescribeStacks", &self.region).profile(self.profile.as_deref());
            let resp = with_backoff(self.backoff, &self.cancel, || async {
                self.client
                    .describe_stacks()
                    .set_next_token(next.clone())
                    .send()
                    .await
                    .map_err(|e| classify(&site, e))
            })
            .await?;
            out.extend(resp.stacks().iter().map(stack_from_api));
            next = resp.next_token().map(str::to_owned);
            if next.is_none() {
                return Ok(out);
            }
        }
    }

    /// One stack, by ARN (works for deleted stacks) or by name.
    pub async fn describe(&self, stack: &str, label: &str) -> Result<Option<StackInfo>, AwsError> {
        let site = self.site("cloudformation:DescribeStacks", label);
        let resp = with_backoff(self.backoff, &self.cancel, || async {
            self.client
                .describe_stacks()
                .stack_name(stack)
                .send()
                .await
                .map_err(|e| classify(&site, e))
        })
        .await?;
        Ok(resp.stacks().first().map(stack_from_api))
    }

    /// One page of a stack's events, newest first.
    pub async fn events_page(
        &self,
        stack_id: &str,
        label: &str,
        next: Option<String>,
    ) -> Result<(Vec<StackEvent>, Option<String>), AwsError> {
        let site = self.site("cloudformation:DescribeStackEvents", label);
        let resp = with_backoff(self.backoff, &self.cancel, || async {
            self.client
                .describe_stack_events()
                .stack_name(stack_id)
                .set_next_token(next.clone())
                .send()
                .await
                .map_err(|e| classify(&site, e))
        })
        .await?;
        let events = resp.stack_events().iter().map(event_from_api).collect();
        Ok((events, resp.next_token().map(str::to_owned)))
    }

    /// Creates a change set (CREATE for a new stack or one left in REVIEW_IN_PROGRESS, UPDATE
    /// otherwise) and returns its ARN and the stack's ARN.
    pub async fn create_change_set(
        &self,
        spec: &StackSpec,
        create: bool,
        name: &str,
        token: &str,
    ) -> Result<(String, String), AwsError> {
        let site = self.site("cloudformation:CreateChangeSet", &spec.name);
        let parameters: Vec<Parameter> = spec
            .parameters
            .iter()
            .map(|(k, v)| Parameter::builder().parameter_key(k).parameter_value(v).build())
            .collect();
        let tags: Vec<Tag> = spec
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let kind = if create {
            ChangeSetType::Create
        } else {
            ChangeSetType::Update
        };
        let resp = with_backoff(self.backoff, &self.cancel, || async {
            self.client
                .create_change_set()
                .stack_name(&spec.name)
                .change_set_name(name)
                .change_set_type(kind.clone())
                .template_body(&spec.template)
                .set_parameters(Some(parameters.clone()))
                .set_tags(Some(tags.clone()))
                .capabilities(Capability::CapabilityIam)
                .capabilities(Capability::CapabilityNamedIam)
                .client_token(token)
                .description("thespctl up")
                .send()
                .await
                .map_err(|e| classify(&site, e))
        })
        .await?;
        let id = resp.id().unwrap_or(name).to_string();
        let stack_id = resp.stack_id().unwrap_or(&spec.name).to_string();
        Ok((id, stack_id))
    }

    /// A change set's status, and its resource changes when `with_changes` (all pages).
    pub async fn describe_change_set(
        &self,
        id: &str,
        label: &str,
        with_changes: bool,
    ) -> Result<ChangeSetInfo, AwsError> {
        let mut info = ChangeSetInfo::default();
        let mut next: Option<String> = None;
        loop {
            let site = self.site("cloudformation:DescribeChangeSet", label);
            let resp = with_backoff(self.backoff, &self.cancel, || async {
                self.client
                    .describe_change_set()
                    .change_set_name(id)
                    .set_next_token(next.clone())
                    .send()
                    .await
                    .map_err(|e| classify(&site, e))
            })
            .await?;
            info.status = resp.status().map(|s| s.as_str().to_string()).unwrap_or_default();
            info.status_reason = resp.status_reason().map(str::to_owned);
            for change in resp.changes() {
                if let Some(rc) = change.resource_change() {
                    let details: Vec<Detail> = rc
                        .details()
                        .iter()
                        .map(|d| Detail {
                            attribute: d
                                .target()
                                .and_then(|t| t.attribute())
                                .map(|a| a.as_str().to_string()),
                            name: d.target().and_then(|t| t.name()).map(str::to_owned),
                            change_source: d.change_source().map(|c| c.as_str().to_string()),
                            causing_entity: d.causing_entity().map(str::to_owned),
                        })
                        .collect();
                    info.changes.push(ResourceChange::new(
                        rc.action().map(|a| a.as_str()).unwrap_or("Modify"),
                        rc.replacement().map(|r| r.as_str()),
                        rc.logical_resource_id().unwrap_or_default(),
                        rc.resource_type().unwrap_or_default(),
                        &details,
                    ));
                }
            }
            next = resp.next_token().map(str::to_owned);
            if !with_changes || next.is_none() || !info.is_settled() {
                return Ok(info);
            }
        }
    }

    pub async fn delete_change_set(&self, id: &str, label: &str) -> Result<(), AwsError> {
        let site = self.site("cloudformation:DeleteChangeSet", label);
        with_backoff(self.backoff, &self.cancel, || async {
            self.client
                .delete_change_set()
                .change_set_name(id)
                .send()
                .await
                .map_err(|e| classify(&site, e))
        })
        .await?;
        Ok(())
    }

    pub async fn execute_change_set(&self, id: &str, label: &str, token: &str) -> Result<(), AwsError> {
        let site = self.site("cloudformation:ExecuteChangeSet", label);
        with_backoff(self.backoff, &self.cancel, || async {
            self.client
                .execute_change_set()
                .change_set_name(id)
                .client_request_token(token)
                .send()
                .await
                .map_err(|e| classify(&site, e))
        })
        .await?;
        Ok(())
    }

    pub async fn delete_stack(&self, stack_id: &str, label: &str, token: &str) -> Result<(), AwsError> {
        let site = self.site("cloudformation:DeleteStack", label);
        with_backoff(self.backoff, &self.cancel, || async {
            self.client
                .delete_stack()
                .stack_name(stack_id)
                .client_request_token(token)
                .send()
                .await
                .map_err(|e| classify(&site, e))
        })
        .await?;
        Ok(())
    }

    pub async fn continue_update_rollback(
        &self,
        stack_id: &str,
        label: &str,
        token: &str,
    ) -> Result<(), AwsError> {
        let site = self.site("cloudformation:ContinueUpdateRollback", label);
        with_backoff(self.backoff, &self.cancel, || async {
            self.client
                .continue_update_rollback()
                .stack_name(stack_id)
                .client_request_token(token)
                .send()
                .await
                .map_err(|e| classify(&site, e))
        })
        .await?;
        Ok(())
    }
}

fn stack_from_api(s: &aws_sdk_cloudformation::types::Stack) -> StackInfo {
    StackInfo {
        id: s.stack_id().unwrap_or_default().to_string(),
        name: s.stack_name().unwrap_or_default().to_string(),
        status: s
            .stack_status()
            .map(|st| st.as_str().to_string())
            .unwrap_or_default(),
        status_reason: s.stack_status_reason().map(str::to_owned),
        tags: s
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
        parameters: s
            .parameters()
            .iter()
            .filter_map(|p| {
                Some((
                    p.parameter_key()?.to_string(),
                    p.parameter_value().unwrap_or_default().to_string(),
                ))
            })
            .collect(),
        outputs: s
            .outputs()
            .iter()
            .filter_map(|o| {
                Some((
                    o.output_key()?.to_string(),
                    o.output_value().unwrap_or_default().to_string(),
                ))
            })
            .collect(),
    }
}

fn event_from_api(e: &aws_sdk_cloudformation::types::StackEvent) -> StackEvent {
    StackEvent {
        id: e.event_id().unwrap_or_default().to_string(),
        stack_id: e.stack_id().unwrap_or_default().to_string(),
        stack_name: e.stack_name().unwrap_or_default().to_string(),
        logical_id: e.logical_resource_id().unwrap_or_default().to_string(),
        physical_id: e.physical_resource_id().map(str::to_owned),
        resource_type: e.resource_type().unwrap_or_default().to_string(),
        status: e
            .resource_status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        reason: e.resource_status_reason().map(str::to_owned),
        timestamp: e
            .timestamp()
            .copied()
            .unwrap_or(aws_smithy_types::DateTime::from_secs(0)),
        token: e.client_request_token().map(str::to_owned),
    }
}

/// A fresh token for `ClientRequestToken` / change set names: `[a-zA-Z][-a-zA-Z0-9]*`, ≤ 128.
pub fn token(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// At most two describe calls per stack in any one-second window (the politeness budget: with many
/// stacks in flight, CloudFormation throttles accounts that poll harder).
#[derive(Debug, Default)]
pub struct Pacer {
    /// The two most recent calls, oldest first.
    recent: [Option<Instant>; 2],
}

impl Pacer {
    pub const WINDOW: Duration = Duration::from_secs(1);

    /// How long to wait before the next call may go out (zero when it may go now).
    pub fn delay(&self, now: Instant) -> Duration {
        match self.recent[0] {
            Some(oldest) => (oldest + Self::WINDOW).saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    /// Records a call made at `now`.
    pub fn record(&mut self, now: Instant) {
        self.recent = [self.recent[1], Some(now)];
    }

    /// Waits for the budget (or cancellation, which returns `false`) and records the call.
    pub async fn ready(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.delay(Instant::now());
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => return false,
            }
        }
        self.record(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_allows_two_calls_per_second_window() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        assert_eq!(p.delay(t0), Duration::ZERO);
        p.record(t0);
        assert_eq!(p.delay(t0), Duration::ZERO);
        p.record(t0 + Duration::from_millis(10));
        // A third call must wait until a second after the first.
        assert_eq!(
            p.delay(t0 + Duration::from_millis(20)),
            Duration::from_millis(980)
        );
        p.record(t0 + Duration::from_secs(1));
        assert_eq!(p.delay(t0 + Duration::from_secs(1)), Duration::from_millis(10));
    }

    #[test]
    fn no_changes_is_recognised_only_on_failed_change_sets() {
        let cs = |status: &str, reason: Option<&str>| ChangeSetInfo {
            status: status.into(),
            status_reason: reason.map(str::to_owned),
            changes: vec![],
        };
        let reason = "The submitted information didn't contain changes. Submit different information to create a change set.";
        assert!(cs("FAILED", Some(reason)).has_no_changes());
        assert!(
            !cs(
                "FAILED",
                Some("Template error: unresolved resource dependencies [Foo]")
            )
            .has_no_changes()
        );
        assert!(!cs("CREATE_COMPLETE", None).has_no_changes());
        assert!(cs("CREATE_COMPLETE", None).is_settled());
        assert!(!cs("CREATE_IN_PROGRESS", None).is_settled());
    }

    #[test]
    fn tokens_fit_cloudformation_patterns() {
        let t = token("thespctl");
        assert!(t.len() <= 128);
        assert!(t.starts_with("thespctl-"));
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{t}");
    }
}
