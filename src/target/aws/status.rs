//! `status` on AWS: per thespian, its stack, its ECS service and rollout, and its tasks with their
//! container instance, EC2 instance and host port.

use std::collections::BTreeSet;

use aws_sdk_ecs::types::DesiredStatus;

use super::AwsTarget;
use super::down::fleet_stacks;
use super::ecs::{task_definition_revision, task_rows};
use super::error::AwsError;
use super::report::{EnvironmentStatus, ServiceStatus, StatusReport, ThespianStatus};
use super::templates::environment;
use crate::Context;
use crate::error::Result;
use crate::fleet::FleetRef;

pub(super) async fn status(target: &AwsTarget, fleet: &FleetRef, ctx: &Context) -> Result<StatusReport> {
    let (env, services) = fleet_stacks(target, &fleet.fleet, ctx).await?;
    if env.is_none() && services.is_empty() {
        return Err(AwsError::NotDeployed {
            fleet: fleet.fleet.clone(),
            region: target.region.clone(),
        }
        .into());
    }
    let cluster = env
        .as_ref()
        .and_then(|e| e.outputs.get(environment::output::CLUSTER_NAME).cloned())
        .unwrap_or_else(|| fleet.fleet.clone());
    let ecs = target.ecs(ctx);

    let names: Vec<String> = services
        .iter()
        .filter_map(|s| s.thespian().map(str::to_owned))
        .collect();
    let found = ecs.services(&cluster, &names).await?;
    let mut tasks_by_service = Vec::new();
    for name in &names {
        let tasks = if found.iter().any(|s| &s.name == name) {
            ecs.tasks(&cluster, name, DesiredStatus::Running).await?
        } else {
            Vec::new()
        };
        tasks_by_service.push(tasks);
    }
    let instance_arns: Vec<String> = tasks_by_service
        .iter()
        .flatten()
        .filter_map(|t| t.container_instance_arn.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let instances = if instance_arns.is_empty() {
        Default::default()
    } else {
        ecs.instances(&cluster, &instance_arns).await?
    };

    let mut thespians = Vec::new();
    for ((stack, name), tasks) in services.iter().zip(&names).zip(&tasks_by_service) {
        let service = found.iter().find(|s| &s.name == name).map(|s| {
            let primary = s.deployments.iter().find(|d| d.status == "PRIMARY");
            ServiceStatus {
                name: s.name.clone(),
                status: s.status.clone(),
                desired: s.desired,
                running: s.running,
                pending: s.pending,
                rollout_state: primary.and_then(|d| d.rollout_state.clone()),
                rollout_reason: primary
                    .and_then(|d| d.rollout_reason.as_deref().map(|r| r.trim().to_string())),
                other_deployments: s.deployments.len().saturating_sub(1),
                task_definition: s.task_definition.clone(),
                task_definition_revision: s.task_definition.as_deref().and_then(task_definition_revision),
                latest_event: s.events.first().map(|e| e.message.trim().to_string()),
            }
        });
        thespians.push(ThespianStatus {
            name: name.clone(),
            stack: stack.name.clone(),
            stack_status: stack.status.clone(),
            service,
            tasks: task_rows(tasks, name, &instances),
        });
    }
    thespians.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(StatusReport {
        fleet: fleet.fleet.clone(),
        region: target.region.clone(),
        environment: env.map(|e| EnvironmentStatus {
            stack: e.name.clone(),
            stack_status: e.status.clone(),
            cluster: cluster.clone(),
        }),
        thespians,
    })
}
