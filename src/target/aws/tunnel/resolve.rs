//! From a thespian name to a Session Manager target: the ECS service's running task, its container
//! instance, the EC2 instance id, and the task's dynamic host port (bridge networking).
//!
//! ListTasks (desiredStatus RUNNING) → DescribeTasks (lastStatus RUNNING, sorted by task id; `--replica`
//! indexes this list) → `containerInstanceArn` → DescribeContainerInstances → `ec2InstanceId`; the host
//! port is the task's `containers[].networkBindings[].hostPort`.

use aws_sdk_ecs::types::{DesiredStatus, Task};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use serde::{Deserialize, Serialize};

use super::{TunnelError, api_error};

/// The task a tunnel goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedTask {
    pub cluster: String,
    pub service: String,
    pub task_arn: String,
    /// The last segment of the task ARN (both ARN forms).
    pub task_id: String,
    pub container_instance_arn: String,
    pub instance_id: String,
    /// The task's host port; `None` when the task has no TCP network binding (see [`require_host_port`]).
    pub host_port: Option<u16>,
    /// The container port behind `host_port`.
    pub container_port: Option<u16>,
}

/// The parts of a task this module reads, from the SDK type or from a recorded JSON response.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskFacts {
    pub task_arn: String,
    #[serde(default)]
    pub last_status: Option<String>,
    #[serde(default)]
    pub container_instance_arn: Option<String>,
    #[serde(default)]
    pub containers: Vec<ContainerFacts>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerFacts {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub network_bindings: Vec<BindingFacts>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingFacts {
    #[serde(default)]
    pub container_port: Option<i32>,
    #[serde(default)]
    pub host_port: Option<i32>,
    #[serde(default)]
    pub protocol: Option<String>,
}

impl From<&Task> for TaskFacts {
    fn from(t: &Task) -> Self {
        TaskFacts {
            task_arn: t.task_arn().unwrap_or_default().to_string(),
            last_status: t.last_status().map(str::to_string),
            container_instance_arn: t.container_instance_arn().map(str::to_string),
            containers: t
                .containers()
                .iter()
                .map(|c| ContainerFacts {
                    name: c.name().map(str::to_string),
                    network_bindings: c
                        .network_bindings()
                        .iter()
                        .map(|b| BindingFacts {
                            container_port: b.container_port(),
                            host_port: b.host_port(),
                            protocol: b.protocol().map(|p| p.as_str().to_string()),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The task id: the last path segment of `…:task/<uuid>` (old form) and `…:task/<cluster>/<hex>` (new).
pub fn task_id(task_arn: &str) -> &str {
    task_arn.rsplit('/').next().unwrap_or(task_arn)
}

/// The host port to forward to: a TCP binding with a host port, preferring the container named like the
/// service (the thespian); otherwise the first one. Returns `(host_port, container_port)`.
pub fn pick_host_port(task: &TaskFacts, service: &str) -> Option<(u16, Option<u16>)> {
    let tcp_bindings = |c: &ContainerFacts| {
        c.network_bindings
            .iter()
            .filter(|b| {
                b.protocol
                    .as_deref()
                    .is_none_or(|p| p.eq_ignore_ascii_case("tcp"))
            })
            .filter_map(|b| {
                let host = u16::try_from(b.host_port?).ok().filter(|p| *p != 0)?;
                Some((host, b.container_port.and_then(|p| u16::try_from(p).ok())))
            })
            .collect::<Vec<_>>()
    };
    let named = task
        .containers
        .iter()
        .filter(|c| c.name.as_deref() == Some(service))
        .flat_map(tcp_bindings)
        .next();
    named.or_else(|| task.containers.iter().flat_map(tcp_bindings).next())
}

/// Resolves `service` in `cluster` to one running task and its EC2 instance.
pub async fn resolve_task(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    service: &str,
    replica: Option<u32>,
) -> Result<ResolvedTask, TunnelError> {
    let mut arns = Vec::new();
    let mut pages = ecs
        .list_tasks()
        .cluster(cluster)
        .service_name(service)
        .desired_status(DesiredStatus::Running)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| ecs_error("ListTasks", cluster, service, e))?;
        arns.extend(page.task_arns().iter().cloned());
    }
    if arns.is_empty() {
        return Err(TunnelError::NoRunningTask {
            cluster: cluster.into(),
            service: service.into(),
        });
    }
    let mut tasks: Vec<TaskFacts> = Vec::new();
    for chunk in arns.chunks(100) {
        let out = ecs
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| ecs_error("DescribeTasks", cluster, service, e))?;
        tasks.extend(out.tasks().iter().map(TaskFacts::from));
    }
    let task = choose_task(tasks, cluster, service, replica)?;
    let container_instance_arn = task
        .container_instance_arn
        .clone()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| TunnelError::NoContainerInstance {
            task_id: task_id(&task.task_arn).to_string(),
        })?;
    let out = ecs
        .describe_container_instances()
        .cluster(cluster)
        .container_instances(&container_instance_arn)
        .send()
        .await
        .map_err(|e| ecs_error("DescribeContainerInstances", cluster, service, e))?;
    let instance_id = out
        .container_instances()
        .iter()
        .find(|ci| ci.container_instance_arn() == Some(container_instance_arn.as_str()))
        .or_else(|| out.container_instances().first())
        .and_then(|ci| ci.ec2_instance_id())
        .map(str::to_string)
        .ok_or_else(|| TunnelError::NoContainerInstance {
            task_id: task_id(&task.task_arn).to_string(),
        })?;
    let port = pick_host_port(&task, service);
    Ok(ResolvedTask {
        cluster: cluster.into(),
        service: service.into(),
        task_id: task_id(&task.task_arn).to_string(),
        task_arn: task.task_arn,
        container_instance_arn,
        instance_id,
        host_port: port.map(|p| p.0),
        container_port: port.and_then(|p| p.1),
    })
}

/// The running tasks in task-id order, and the one `replica` names (default: the first).
pub fn choose_task(
    tasks: Vec<TaskFacts>,
    cluster: &str,
    service: &str,
    replica: Option<u32>,
) -> Result<TaskFacts, TunnelError> {
    let mut running: Vec<TaskFacts> = tasks
        .into_iter()
        .filter(|t| t.last_status.as_deref() == Some("RUNNING"))
        .collect();
    running.sort_by(|a, b| task_id(&a.task_arn).cmp(task_id(&b.task_arn)));
    if running.is_empty() {
        return Err(TunnelError::NoRunningTask {
            cluster: cluster.into(),
            service: service.into(),
        });
    }
    let index = replica.unwrap_or(0) as usize;
    if index >= running.len() {
        return Err(TunnelError::InvalidReplica {
            replica: replica.unwrap_or(0),
            service: service.into(),
            running: running.iter().map(|t| task_id(&t.task_arn).to_string()).collect(),
        });
    }
    Ok(running.swap_remove(index))
}

/// The host port of a resolved task, or the error that says the task has none.
pub fn require_host_port(task: &ResolvedTask) -> Result<u16, TunnelError> {
    task.host_port.ok_or_else(|| TunnelError::NoHostPort {
        task_id: task.task_id.clone(),
        service: task.service.clone(),
    })
}

fn ecs_error<E, R>(
    operation: &'static str,
    cluster: &str,
    service: &str,
    e: aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> TunnelError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match e.code() {
        Some("ClusterNotFoundException") => TunnelError::ClusterNotFound {
            cluster: cluster.into(),
        },
        Some("ServiceNotFoundException") => TunnelError::ServiceNotFound {
            cluster: cluster.into(),
            service: service.into(),
        },
        _ => api_error(operation, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct DescribeTasks {
        tasks: Vec<TaskFacts>,
    }

    fn fixture() -> Vec<TaskFacts> {
        let text = include_str!("../../../../tests/fixtures/aws/ecs-describe-tasks-ec2-awscli-example.json");
        serde_json::from_str::<DescribeTasks>(text).unwrap().tasks
    }

    #[test]
    fn the_recorded_task_gives_its_binding_and_chain() {
        let tasks = fixture();
        let task = &tasks[0];
        assert_eq!(pick_host_port(task, "simple-app"), Some((80, Some(80))));
        assert_eq!(
            pick_host_port(task, "another-name"),
            Some((80, Some(80))),
            "falls back to the first"
        );
        assert_eq!(task_id(&task.task_arn), "4d590253bb114126b7afa7b58eea9221");
        assert!(
            task.container_instance_arn
                .as_deref()
                .unwrap()
                .contains(":container-instance/")
        );
        let chosen = choose_task(tasks, "MyCluster", "simple-app", None).unwrap();
        assert_eq!(task_id(&chosen.task_arn), "4d590253bb114126b7afa7b58eea9221");
    }

    #[test]
    fn task_ids_come_from_both_arn_forms() {
        assert_eq!(
            task_id("arn:aws:ecs:us-east-1:123456789012:task/MyCluster/4d590253bb114126b7afa7b58eea9221"),
            "4d590253bb114126b7afa7b58eea9221"
        );
        assert_eq!(
            task_id("arn:aws:ecs:us-east-1:123456789012:task/0ac4bb1c-be98-4202-a9c1-03153e91c05e"),
            "0ac4bb1c-be98-4202-a9c1-03153e91c05e"
        );
    }

    #[test]
    fn dynamic_ports_prefer_the_thespian_container_and_skip_udp_and_unbound() {
        let task: TaskFacts = serde_json::from_value(serde_json::json!({
            "taskArn": "arn:aws:ecs:eu-west-1:123456789012:task/demo/0123456789abcdef0123456789abcdef",
            "lastStatus": "RUNNING",
            "containers": [
                {"name": "sidecar", "networkBindings": [{"containerPort": 9901, "hostPort": 32770, "protocol": "tcp"}]},
                {"name": "gilbert", "networkBindings": [
                    {"containerPort": 53, "hostPort": 32771, "protocol": "udp"},
                    {"containerPort": 50051, "hostPort": 0, "protocol": "tcp"},
                    {"containerPort": 50051, "hostPort": 32769, "protocol": "tcp"}
                ]}
            ]
        }))
        .unwrap();
        assert_eq!(pick_host_port(&task, "gilbert"), Some((32769, Some(50051))));
        let bare: TaskFacts = serde_json::from_value(serde_json::json!({
            "taskArn": "arn:aws:ecs:eu-west-1:123456789012:task/demo/ff",
            "containers": [{"name": "gilbert"}]
        }))
        .unwrap();
        assert_eq!(pick_host_port(&bare, "gilbert"), None);
    }

    #[test]
    fn replicas_index_running_tasks_in_task_id_order() {
        let t = |id: &str, status: &str| TaskFacts {
            task_arn: format!("arn:aws:ecs:eu-west-1:123456789012:task/demo/{id}"),
            last_status: Some(status.into()),
            ..TaskFacts::default()
        };
        let tasks = vec![t("cc", "RUNNING"), t("aa", "RUNNING"), t("bb", "PENDING")];
        let second = choose_task(tasks.clone(), "demo", "gilbert", Some(1)).unwrap();
        assert_eq!(task_id(&second.task_arn), "cc");
        match choose_task(tasks, "demo", "gilbert", Some(2)) {
            Err(TunnelError::InvalidReplica { replica, running, .. }) => {
                assert_eq!(replica, 2);
                assert_eq!(running, vec!["aa", "cc"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            choose_task(vec![t("bb", "PENDING")], "demo", "gilbert", None),
            Err(TunnelError::NoRunningTask { .. })
        ));
    }
}
