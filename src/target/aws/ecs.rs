//! ECS: waiting for a service's deployment to finish (and noticing when the circuit breaker rolled it
//! back), the first failing task's stopped reason, and the task → container instance → EC2 instance
//! and host port chain `status` shows.
//!
//! The decisions are pure functions over our own model, tested on recorded `describe-services` and
//! `describe-tasks` output; moto never starts tasks, so it cannot show any of this.

use std::collections::BTreeMap;

use aws_sdk_ecs::Client;
use aws_smithy_types::DateTime;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::error::{AwsError, Backoff, CallSite, classify, with_backoff};

/// One ECS service as `DescribeServices` reports it.
#[derive(Debug, Clone, Default)]
pub struct Service {
    pub name: String,
    pub arn: String,
    /// `ACTIVE`, `DRAINING`, `INACTIVE`.
    pub status: String,
    pub desired: i32,
    pub running: i32,
    pub pending: i32,
    pub task_definition: Option<String>,
    pub deployments: Vec<Deployment>,
    /// Newest first, at most 100.
    pub events: Vec<ServiceEvent>,
}

#[derive(Debug, Clone, Default)]
pub struct Deployment {
    pub id: String,
    /// `PRIMARY`, `ACTIVE`, `INACTIVE`.
    pub status: String,
    pub task_definition: Option<String>,
    pub desired: i32,
    pub running: i32,
    pub pending: i32,
    pub failed_tasks: i32,
    /// `IN_PROGRESS`, `COMPLETED`, `FAILED`; absent on old services.
    pub rollout_state: Option<String>,
    pub rollout_reason: Option<String>,
    pub created_at: Option<DateTime>,
}

#[derive(Debug, Clone)]
pub struct ServiceEvent {
    pub id: String,
    pub created_at: DateTime,
    pub message: String,
}

/// One task, with what `status` and the stopped-reason report need.
#[derive(Debug, Clone, Default)]
pub struct Task {
    pub arn: String,
    pub task_definition: Option<String>,
    pub last_status: Option<String>,
    pub desired_status: Option<String>,
    pub health: Option<String>,
    pub container_instance_arn: Option<String>,
    pub created_at: Option<DateTime>,
    pub started_at: Option<DateTime>,
    pub stopped_at: Option<DateTime>,
    pub stopped_reason: Option<String>,
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Default)]
pub struct Container {
    pub name: String,
    pub last_status: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// `(container port, host port)` of each network binding.
    pub bindings: Vec<(i32, i32)>,
}

impl Task {
    /// The task id: the last path segment of both ARN forms (`task/<uuid>`, `task/<cluster>/<hex>`).
    pub fn id(&self) -> &str {
        last_segment(&self.arn)
    }

    /// The host port of the thespian's container (bridge mode, dynamic port): the binding of the
    /// container named like the service, else the first binding of any container.
    pub fn host_port(&self, container: &str) -> Option<i32> {
        let named = self.containers.iter().find(|c| c.name == container);
        named
            .and_then(|c| c.bindings.first())
            .or_else(|| self.containers.iter().find_map(|c| c.bindings.first()))
            .map(|(_, host)| *host)
    }

    /// `task 4d59… stopped: Essential container in task exited; gilbert: exit 1 (…)`.
    pub fn stopped_summary(&self) -> String {
        let mut out = format!("task {}", self.id());
        match self
            .stopped_reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            Some(reason) => out.push_str(&format!(" stopped: {reason}")),
            None => out.push_str(" stopped"),
        }
        for c in &self.containers {
            let reason = c.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
            match (c.exit_code, reason) {
                (Some(code), Some(reason)) => out.push_str(&format!("; {}: exit {code} ({reason})", c.name)),
                (Some(code), None) if code != 0 => out.push_str(&format!("; {}: exit {code}", c.name)),
                (None, Some(reason)) => out.push_str(&format!("; {}: {reason}", c.name)),
                _ => {}
            }
        }
        out
    }
}

pub fn last_segment(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// `family:revision` from a task definition ARN.
pub fn task_definition_name(arn: &str) -> &str {
    last_segment(arn)
}

/// The revision number of a task definition ARN (`…:task-definition/demo-gilbert:3` → 3).
pub fn task_definition_revision(arn: &str) -> Option<u32> {
    arn.rsplit(':').next().and_then(|r| r.parse().ok())
}

/// Where one rollout stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Rollout {
    /// The PRIMARY deployment is ours, COMPLETED, and running = desired.
    Done,
    /// Still going; `progress` for the progress line, and the newest service event since we started.
    Waiting {
        progress: String,
        latest_event: Option<String>,
    },
    /// Rolled back, failed or superseded; `events` are the service events since we started that name
    /// the deployments involved, oldest first (quoted, not parsed).
    Failed { summary: String, events: Vec<String> },
}

/// Watches one service's rollout across `DescribeServices` snapshots.
///
/// "Ours" is the deployment running the task definition our stack registered (the stack's
/// `TaskDefinitionArn` output), or, when that is unknown, the PRIMARY deployment of the first snapshot.
/// After a circuit-breaker rollback the failed deployment *vanishes* and no FAILED state remains, so
/// losing sight of ours — or seeing another PRIMARY — is the failure signal.
#[derive(Debug, Clone)]
pub struct RolloutWatch {
    pub target_task_definition: Option<String>,
    /// Service events before this instant are from earlier deployments.
    pub since: DateTime,
    ours: Option<String>,
}

impl RolloutWatch {
    pub fn new(target_task_definition: Option<String>, since: DateTime) -> Self {
        RolloutWatch {
            target_task_definition,
            since,
            ours: None,
        }
    }

    /// The deployment id this watch follows, once known.
    pub fn deployment(&self) -> Option<&str> {
        self.ours.as_deref()
    }

    pub fn assess(&mut self, service: &Service) -> Rollout {
        if service.status != "ACTIVE" {
            return Rollout::Failed {
                summary: format!("the service is {}", service.status),
                events: self.events_since(service, &[]),
            };
        }
        let Some(primary) = service.deployments.iter().find(|d| d.status == "PRIMARY") else {
            return Rollout::Waiting {
                progress: "no primary deployment yet".into(),
                latest_event: self.latest_event(service),
            };
        };

        if self.ours.is_none() {
            self.ours = match &self.target_task_definition {
                Some(target) => service
                    .deployments
                    .iter()
                    .find(|d| d.task_definition.as_deref() == Some(target.as_str()))
                    .map(|d| d.id.clone()),
                None => Some(primary.id.clone()),
            };
            if self.ours.is_none() {
                let target = self.target_task_definition.as_deref().unwrap_or_default();
                return Rollout::Failed {
                    summary: format!(
                        "no deployment runs {} any more: the service went back to {} (rolled back by the \
                         deployment circuit breaker, or replaced by a newer deployment)",
                        task_definition_name(target),
                        primary
                            .task_definition
                            .as_deref()
                            .map(task_definition_name)
                            .unwrap_or("?")
                    ),
                    events: self.events_since(service, &[&primary.id]),
                };
            }
        }
        let ours = self.ours.clone().unwrap_or_default();

        if !service.deployments.iter().any(|d| d.id == ours) {
            return Rollout::Failed {
                summary: format!(
                    "deployment {ours} is gone: the deployment circuit breaker rolled it back to {}",
                    primary.id
                ),
                events: self.events_since(service, &[&ours, &primary.id]),
            };
        }
        if primary.id != ours {
            return Rollout::Failed {
                summary: format!(
                    "deployment {ours} is no longer the primary one ({} is)",
                    primary.id
                ),
                events: self.events_since(service, &[&ours, &primary.id]),
            };
        }
        if primary.rollout_state.as_deref() == Some("FAILED") {
            let reason = primary
                .rollout_reason
                .as_deref()
                .map(str::trim)
                .unwrap_or("rollout failed");
            return Rollout::Failed {
                summary: format!("deployment {ours} failed: {reason}"),
                events: self.events_since(service, &[&ours]),
            };
        }

        let completed = match primary.rollout_state.as_deref() {
            Some(state) => state == "COMPLETED",
            // Services from before rollout states: done when ours is the only deployment left.
            None => service.deployments.len() == 1,
        };
        if completed && primary.running == primary.desired && service.running == service.desired {
            return Rollout::Done;
        }
        let mut progress = format!("{}/{} running", primary.running, primary.desired);
        if primary.pending > 0 {
            progress.push_str(&format!(", {} pending", primary.pending));
        }
        if primary.failed_tasks > 0 {
            progress.push_str(&format!(", {} failed", primary.failed_tasks));
        }
        Rollout::Waiting {
            progress,
            latest_event: self.latest_event(service),
        }
    }

    fn latest_event(&self, service: &Service) -> Option<String> {
        service
            .events
            .iter()
            .find(|e| e.created_at >= self.since)
            .map(|e| e.message.trim().to_string())
    }

    /// Service events after `since` that name one of `ids`, oldest first; when none names them, the
    /// newest three after `since`.
    fn events_since(&self, service: &Service, ids: &[&str]) -> Vec<String> {
        let recent: Vec<&ServiceEvent> = service
            .events
            .iter()
            .filter(|e| e.created_at >= self.since)
            .collect();
        let mut named: Vec<String> = recent
            .iter()
            .filter(|e| ids.iter().any(|id| !id.is_empty() && e.message.contains(id)))
            .map(|e| e.message.trim().to_string())
            .collect();
        if named.is_empty() {
            named = recent
                .iter()
                .take(3)
                .map(|e| e.message.trim().to_string())
                .collect();
        }
        named.reverse();
        named
    }
}

/// The first task of `task_definition` that stopped (after `since`): the one whose reason explains a
/// circuit breaker.
pub fn first_stopped<'t>(
    tasks: &'t [Task],
    task_definition: Option<&str>,
    since: Option<DateTime>,
) -> Option<&'t Task> {
    tasks
        .iter()
        .filter(|t| t.stopped_at.is_some() || t.last_status.as_deref() == Some("STOPPED"))
        .filter(|t| task_definition.is_none_or(|td| t.task_definition.as_deref() == Some(td)))
        .filter(|t| since.is_none_or(|s| t.created_at.is_none_or(|c| c >= s)))
        .min_by_key(|t| {
            t.stopped_at
                .or(t.created_at)
                .map(|d| (d.secs(), d.subsec_nanos()))
        })
}

// ---- status ----

/// One task as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    pub task_id: String,
    pub last_status: Option<String>,
    pub desired_status: Option<String>,
    pub health: Option<String>,
    pub task_definition_revision: Option<u32>,
    pub container_instance_id: Option<String>,
    pub ec2_instance_id: Option<String>,
    pub host_port: Option<i32>,
    pub started_at: Option<String>,
}

/// Joins tasks with their container instances' EC2 ids (`container instance ARN → i-…`).
pub fn task_rows(tasks: &[Task], container: &str, instances: &BTreeMap<String, String>) -> Vec<TaskStatus> {
    let mut rows: Vec<TaskStatus> = tasks
        .iter()
        .map(|t| TaskStatus {
            task_id: t.id().to_string(),
            last_status: t.last_status.clone(),
            desired_status: t.desired_status.clone(),
            health: t.health.clone(),
            task_definition_revision: t.task_definition.as_deref().and_then(task_definition_revision),
            container_instance_id: t
                .container_instance_arn
                .as_deref()
                .map(|a| last_segment(a).to_string()),
            ec2_instance_id: t
                .container_instance_arn
                .as_ref()
                .and_then(|a| instances.get(a).cloned()),
            host_port: t.host_port(container),
            started_at: t.started_at.map(|d| rfc3339(&d)),
        })
        .collect();
    rows.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    rows
}

pub fn rfc3339(d: &DateTime) -> String {
    d.fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| d.secs().to_string())
}

// ---- the API, mapped into the model ----

/// ECS calls with backoff on throttling, errors classified.
#[derive(Debug, Clone)]
pub struct Ecs {
    pub client: Client,
    pub region: String,
    pub profile: Option<String>,
    pub cancel: CancellationToken,
}

impl Ecs {
    fn site(&self, operation: &'static str, subject: String) -> CallSite<'_> {
        CallSite::new(operation, &self.region)
            .on(subject)
            .profile(self.profile.as_deref())
    }

    /// `DescribeServices` for up to any number of names (batches of 10); missing services are left out.
    pub async fn services(&self, cluster: &str, names: &[String]) -> Result<Vec<Service>, AwsError> {
        let mut out = Vec::new();
        for chunk in names.chunks(10) {
            let site = self.site("ecs:DescribeServices", format!("cluster {cluster}"));
            let resp = with_backoff(Backoff::default(), &self.cancel, || async {
                match self
                    .client
                    .describe_services()
                    .cluster(cluster)
                    .set_services(Some(chunk.to_vec()))
                    .send()
                    .await
                {
                    Ok(resp) => Ok(Some(resp)),
                    // A cluster that does not exist (yet, or any more) has no services.
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|se| se.is_cluster_not_found_exception()) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(classify(&site, e)),
                }
            })
            .await?;
            let Some(resp) = resp else {
                return Ok(Vec::new());
            };
            out.extend(resp.services().iter().map(service_from_api));
        }
        Ok(out)
    }

    /// Every task of `service` with `desired` status (`RUNNING` or `STOPPED`), described.
    pub async fn tasks(
        &self,
        cluster: &str,
        service: &str,
        desired: aws_sdk_ecs::types::DesiredStatus,
    ) -> Result<Vec<Task>, AwsError> {
        let mut arns = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let site = self.site("ecs:ListTasks", format!("service {service}"));
            let resp = with_backoff(Backoff::default(), &self.cancel, || async {
                self.client
                    .list_tasks()
                    .cluster(cluster)
                    .service_name(service)
                    .desired_status(desired.clone())
                    .set_next_token(next.clone())
                    .send()
                    .await
                    .map_err(|e| classify(&site, e))
            })
            .await?;
            arns.extend(resp.task_arns().iter().cloned());
            next = resp.next_token().map(str::to_owned);
            if next.is_none() {
                break;
            }
        }
        let mut tasks = Vec::new();
        for chunk in arns.chunks(100) {
            let site = self.site("ecs:DescribeTasks", format!("service {service}"));
            let resp = with_backoff(Backoff::default(), &self.cancel, || async {
                self.client
                    .describe_tasks()
                    .cluster(cluster)
                    .set_tasks(Some(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| classify(&site, e))
            })
            .await?;
            tasks.extend(resp.tasks().iter().map(task_from_api));
        }
        Ok(tasks)
    }

    /// Container instance ARN → EC2 instance id.
    pub async fn instances(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<BTreeMap<String, String>, AwsError> {
        let mut out = BTreeMap::new();
        for chunk in arns.chunks(100) {
            let site = self.site("ecs:DescribeContainerInstances", format!("cluster {cluster}"));
            let resp = with_backoff(Backoff::default(), &self.cancel, || async {
                self.client
                    .describe_container_instances()
                    .cluster(cluster)
                    .set_container_instances(Some(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| classify(&site, e))
            })
            .await?;
            for ci in resp.container_instances() {
                if let (Some(arn), Some(ec2)) = (ci.container_instance_arn(), ci.ec2_instance_id()) {
                    out.insert(arn.to_string(), ec2.to_string());
                }
            }
        }
        Ok(out)
    }
}

fn service_from_api(s: &aws_sdk_ecs::types::Service) -> Service {
    Service {
        name: s.service_name().unwrap_or_default().to_string(),
        arn: s.service_arn().unwrap_or_default().to_string(),
        status: s.status().unwrap_or_default().to_string(),
        desired: s.desired_count(),
        running: s.running_count(),
        pending: s.pending_count(),
        task_definition: s.task_definition().map(str::to_owned),
        deployments: s
            .deployments()
            .iter()
            .map(|d| Deployment {
                id: d.id().unwrap_or_default().to_string(),
                status: d.status().unwrap_or_default().to_string(),
                task_definition: d.task_definition().map(str::to_owned),
                desired: d.desired_count(),
                running: d.running_count(),
                pending: d.pending_count(),
                failed_tasks: d.failed_tasks(),
                rollout_state: d.rollout_state().map(|r| r.as_str().to_string()),
                rollout_reason: d.rollout_state_reason().map(str::to_owned),
                created_at: d.created_at().copied(),
            })
            .collect(),
        events: s
            .events()
            .iter()
            .map(|e| ServiceEvent {
                id: e.id().unwrap_or_default().to_string(),
                created_at: e.created_at().copied().unwrap_or(DateTime::from_secs(0)),
                message: e.message().unwrap_or_default().to_string(),
            })
            .collect(),
    }
}

fn task_from_api(t: &aws_sdk_ecs::types::Task) -> Task {
    Task {
        arn: t.task_arn().unwrap_or_default().to_string(),
        task_definition: t.task_definition_arn().map(str::to_owned),
        last_status: t.last_status().map(str::to_owned),
        desired_status: t.desired_status().map(str::to_owned),
        health: t.health_status().map(|h| h.as_str().to_string()),
        container_instance_arn: t.container_instance_arn().map(str::to_owned),
        created_at: t.created_at().copied(),
        started_at: t.started_at().copied(),
        stopped_at: t.stopped_at().copied(),
        stopped_reason: t.stopped_reason().map(str::to_owned),
        containers: t
            .containers()
            .iter()
            .map(|c| Container {
                name: c.name().unwrap_or_default().to_string(),
                last_status: c.last_status().map(str::to_owned),
                exit_code: c.exit_code(),
                reason: c.reason().map(str::to_owned),
                bindings: c
                    .network_bindings()
                    .iter()
                    .filter_map(|b| Some((b.container_port()?, b.host_port()?)))
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod fixtures {
    //! Recorded ECS output (CLI v1/v2 JSON, raw API JSON) into our model.
    use super::*;
    use crate::target::aws::events::fixtures::timestamp;
    use serde_json::Value;

    fn s(v: &Value, k: &str) -> Option<String> {
        v.get(k).and_then(Value::as_str).map(str::to_owned)
    }
    fn n(v: &Value, k: &str) -> i32 {
        v.get(k)
            .and_then(Value::as_i64)
            .and_then(|x| i32::try_from(x).ok())
            .unwrap_or(0)
    }
    fn t(v: &Value, k: &str) -> Option<DateTime> {
        v.get(k).map(timestamp)
    }

    pub fn service(v: &Value) -> Service {
        Service {
            name: s(v, "serviceName").unwrap_or_default(),
            arn: s(v, "serviceArn").unwrap_or_default(),
            status: s(v, "status").unwrap_or_default(),
            desired: n(v, "desiredCount"),
            running: n(v, "runningCount"),
            pending: n(v, "pendingCount"),
            task_definition: s(v, "taskDefinition"),
            deployments: v["deployments"]
                .as_array()
                .map(|ds| {
                    ds.iter()
                        .map(|d| Deployment {
                            id: s(d, "id").unwrap_or_default(),
                            status: s(d, "status").unwrap_or_default(),
                            task_definition: s(d, "taskDefinition"),
                            desired: n(d, "desiredCount"),
                            running: n(d, "runningCount"),
                            pending: n(d, "pendingCount"),
                            failed_tasks: n(d, "failedTasks"),
                            rollout_state: s(d, "rolloutState"),
                            rollout_reason: s(d, "rolloutStateReason"),
                            created_at: t(d, "createdAt"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            events: v["events"]
                .as_array()
                .map(|es| {
                    es.iter()
                        .map(|e| ServiceEvent {
                            id: s(e, "id").unwrap_or_default(),
                            created_at: timestamp(&e["createdAt"]),
                            message: s(e, "message").unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    pub fn services(json: &str) -> Vec<Service> {
        let doc: Value = serde_json::from_str(json).expect("fixture JSON");
        match doc.get("services") {
            Some(list) => list.as_array().expect("services").iter().map(service).collect(),
            None => vec![service(&doc["service"])],
        }
    }

    pub fn tasks(json: &str) -> Vec<Task> {
        let doc: Value = serde_json::from_str(json).expect("fixture JSON");
        doc["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|v| Task {
                arn: s(v, "taskArn").unwrap_or_default(),
                task_definition: s(v, "taskDefinitionArn"),
                last_status: s(v, "lastStatus"),
                desired_status: s(v, "desiredStatus"),
                health: s(v, "healthStatus"),
                container_instance_arn: s(v, "containerInstanceArn"),
                created_at: t(v, "createdAt"),
                started_at: t(v, "startedAt"),
                stopped_at: t(v, "stoppedAt"),
                stopped_reason: s(v, "stoppedReason"),
                containers: v["containers"]
                    .as_array()
                    .map(|cs| {
                        cs.iter()
                            .map(|c| Container {
                                name: s(c, "name").unwrap_or_default(),
                                last_status: s(c, "lastStatus"),
                                exit_code: c
                                    .get("exitCode")
                                    .and_then(Value::as_i64)
                                    .and_then(|x| i32::try_from(x).ok()),
                                reason: s(c, "reason"),
                                bindings: c["networkBindings"]
                                    .as_array()
                                    .map(|bs| {
                                        bs.iter()
                                            .map(|b| (n(b, "containerPort"), n(b, "hostPort")))
                                            .collect()
                                    })
                                    .unwrap_or_default(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }

    pub fn instances(json: &str) -> BTreeMap<String, String> {
        let doc: Value = serde_json::from_str(json).expect("fixture JSON");
        doc["containerInstances"]
            .as_array()
            .expect("containerInstances")
            .iter()
            .filter_map(|ci| Some((s(ci, "containerInstanceArn")?, s(ci, "ec2InstanceId")?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures;
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/aws/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    const TD: &str =
        "arn:aws:ecs:ap-southeast-2:123456789012:task-definition/news-thewest-pr713-web-app-task-definition";
    /// The deployment that failed in the recorded circuit-breaker fixtures (named only by the events).
    const FAILED_DEPLOYMENT: &str = "ecs-svc/1570303241572688488";

    fn ts(s: &str) -> DateTime {
        crate::target::aws::events::fixtures::timestamp(&serde_json::json!(s))
    }

    #[test]
    fn a_rolled_back_deployment_is_a_failure_although_nothing_says_failed() {
        let svc = &fixtures::services(&fixture("ecs-describe-services-circuit-breaker-rolled-back.json"))[0];
        // No FAILED rollout state anywhere: the only PRIMARY is COMPLETED.
        assert!(
            svc.deployments
                .iter()
                .all(|d| d.rollout_state.as_deref() != Some("FAILED"))
        );

        // Our deploy registered revision 5; the service is back on 2.
        let since = ts("2021-04-23T12:50:00+08:00");
        let mut watch = RolloutWatch::new(Some(format!("{TD}:5")), since);
        match watch.assess(svc) {
            Rollout::Failed { summary, events } => {
                assert!(
                    summary.contains("rolled back") || summary.contains("went back"),
                    "{summary}"
                );
                assert!(summary.contains("task-definition:2"), "{summary}");
                // The events that name the deployments, oldest first, quoted as they are.
                assert!(
                    events
                        .iter()
                        .any(|e| e.contains("rolling back to deployment ecs-svc/6405940160831029548")),
                    "{events:#?}"
                );
                let completed = events.iter().position(|e| e.contains("deployment completed"));
                let rolling = events.iter().position(|e| e.contains("rolling back"));
                assert!(rolling < completed, "oldest first: {events:#?}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_vanished_deployment_we_were_following_is_a_rollback() {
        let svc = &fixtures::services(&fixture("ecs-describe-services-circuit-breaker-rolled-back.json"))[0];
        let mut watch = RolloutWatch::new(None, ts("2021-04-23T12:50:00+08:00"));
        watch.ours = Some(FAILED_DEPLOYMENT.into());
        match watch.assess(svc) {
            Rollout::Failed { summary, events } => {
                assert!(
                    summary.contains(FAILED_DEPLOYMENT) && summary.contains("circuit breaker"),
                    "{summary}"
                );
                assert!(
                    events
                        .iter()
                        .any(|e| e.contains("deployment failed: tasks failed to start")),
                    "{events:#?}"
                );
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_rollback_in_progress_fails_at_once_rather_than_waiting_for_it() {
        let svc = &fixtures::services(&fixture(
            "ecs-describe-services-circuit-breaker-rollback-in-progress.json",
        ))[0];
        let mut watch = RolloutWatch::new(None, ts("2021-04-23T12:50:00+08:00"));
        watch.ours = Some(FAILED_DEPLOYMENT.into());
        assert!(matches!(watch.assess(svc), Rollout::Failed { .. }));
    }

    #[test]
    fn the_completed_deployment_we_wanted_is_done() {
        let svc = &fixtures::services(&fixture("ecs-describe-services-circuit-breaker-rolled-back.json"))[0];
        let mut watch = RolloutWatch::new(Some(format!("{TD}:2")), ts("2021-04-23T13:00:00+08:00"));
        assert_eq!(watch.assess(svc), Rollout::Done);
        assert_eq!(watch.deployment(), Some("ecs-svc/6405940160831029548"));
    }

    #[test]
    fn a_deployment_short_of_its_desired_count_is_still_waiting() {
        let svc = &fixtures::services(&fixture(
            "ecs-describe-services-circuit-breaker-rollback-in-progress.json",
        ))[0];
        let mut watch = RolloutWatch::new(Some(format!("{TD}:2")), ts("2021-04-23T12:59:30+08:00"));
        match watch.assess(svc) {
            Rollout::Waiting {
                progress,
                latest_event,
            } => {
                assert_eq!(progress, "1/2 running, 1 pending");
                assert_eq!(
                    latest_event.as_deref(),
                    Some(
                        "(service news-thewest-pr713-web-app-service-452bf42) has started 1 tasks: (task d249df6d4f62428abbbab74a944b5d97)."
                    )
                );
            }
            other => panic!("expected waiting, got {other:?}"),
        }
    }

    #[test]
    fn old_services_without_rollout_state_show_placement_trouble_while_waiting() {
        let svc = &fixtures::services(&fixture(
            "ecs-describe-services-2015-cli-v1-placement-failure.json",
        ))[0];
        let target = "arn:aws:ecs:us-west-2:123456789012:task-definition/httpd-web:36";
        let mut watch = RolloutWatch::new(Some(target.into()), DateTime::from_secs(1_449_500_000));
        match watch.assess(svc) {
            Rollout::Waiting {
                progress,
                latest_event,
            } => {
                assert_eq!(progress, "1/2 running");
                assert!(
                    latest_event
                        .unwrap_or_default()
                        .contains("was unable to place a task")
                );
            }
            other => panic!("expected waiting, got {other:?}"),
        }
    }

    #[test]
    fn service_connect_create_output_is_in_progress() {
        let svc = &fixtures::services(&fixture("ecs-create-service-service-connect-awsdocs.json"))[0];
        let mut watch = RolloutWatch::new(None, DateTime::from_secs(0));
        assert!(matches!(watch.assess(svc), Rollout::Waiting { .. }), "{svc:?}");
    }

    #[test]
    fn tasks_join_container_instances_and_host_ports() {
        let tasks = fixtures::tasks(&fixture("ecs-describe-tasks-ec2-awscli-example.json"));
        let mut instances =
            fixtures::instances(&fixture("ecs-describe-container-instances-2015-raw-api.json"));
        assert_eq!(instances.len(), 3);
        // The two recorded responses come from different clusters; map the task's instance to one of
        // the recorded EC2 ids to exercise the join.
        let ec2 = instances.values().next().cloned().expect("an instance");
        instances.insert(
            tasks[0].container_instance_arn.clone().expect("instance arn"),
            ec2.clone(),
        );

        let rows = task_rows(&tasks, "simple-app", &instances);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        // New-style ARN `task/<cluster>/<hex>`: the id is the last segment.
        assert_eq!(row.task_id, "4d590253bb114126b7afa7b58eea9221");
        assert_eq!(row.host_port, Some(80));
        assert_eq!(
            row.container_instance_id.as_deref(),
            Some("025c7e2c5e054a6790a29fc1fEXAMPLE")
        );
        assert_eq!(row.ec2_instance_id, Some(ec2));
        assert_eq!(row.task_definition_revision, Some(1));
        assert_eq!(row.last_status.as_deref(), Some("RUNNING"));
        // ISO with a -04:00 offset, rendered in UTC.
        assert_eq!(row.started_at.as_deref(), Some("2021-08-11T16:21:34.945Z"));
    }

    #[test]
    fn old_style_task_arns_give_their_uuid() {
        let t = Task {
            arn: "arn:aws:ecs:us-east-1:123456789012:task/f120ddee-5aa5-434e-b765-30503080078b".into(),
            ..Task::default()
        };
        assert_eq!(t.id(), "f120ddee-5aa5-434e-b765-30503080078b");
    }

    #[test]
    fn the_first_stopped_task_of_our_revision_explains_the_failure() {
        // Hand-made: no recorded stopped-task output was found (see SOURCES.md).
        let td = "arn:aws:ecs:eu-west-1:123456789012:task-definition/demo-gilbert:7";
        let task = |id: &str, td: &str, stopped: i64, reason: &str, exit: i32| Task {
            arn: format!("arn:aws:ecs:eu-west-1:123456789012:task/demo/{id}"),
            task_definition: Some(td.into()),
            last_status: Some("STOPPED".into()),
            created_at: Some(DateTime::from_secs(stopped - 30)),
            stopped_at: Some(DateTime::from_secs(stopped)),
            stopped_reason: Some(format!("{reason} ")),
            containers: vec![Container {
                name: "gilbert".into(),
                exit_code: Some(exit),
                ..Container::default()
            }],
            ..Task::default()
        };
        let tasks = vec![
            task("bbb", td, 2_000, "Essential container in task exited", 1),
            task("aaa", td, 1_500, "Essential container in task exited", 2),
            task(
                "old",
                "arn:aws:ecs:eu-west-1:123456789012:task-definition/demo-gilbert:6",
                1_000,
                "Scaling activity",
                0,
            ),
        ];
        let first =
            first_stopped(&tasks, Some(td), Some(DateTime::from_secs(1_200))).expect("a stopped task");
        assert_eq!(first.id(), "aaa");
        assert_eq!(
            first.stopped_summary(),
            "task aaa stopped: Essential container in task exited; gilbert: exit 2"
        );
        assert!(first_stopped(&tasks, Some("other"), None).is_none());
    }

    #[test]
    fn revisions_come_from_the_arn() {
        assert_eq!(task_definition_revision(&format!("{TD}:12")), Some(12));
        assert_eq!(
            task_definition_name(&format!("{TD}:12")),
            "news-thewest-pr713-web-app-task-definition:12"
        );
    }
}
