//! What a change set says it would do, per resource, in the words `plan` prints: add, modify, replace,
//! remove. Pure logic, tested on recorded `describe-change-set` output.

use std::collections::BTreeMap;

use serde::Serialize;

/// One resource a change set would touch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceChange {
    pub action: ChangeAction,
    pub logical_id: String,
    pub resource_type: String,
    /// The property/tag names that change (`Properties.KeyName`, `Tags`), deduplicated, in order.
    pub targets: Vec<String>,
    /// The parameters that cause the change (`CausingEntity` of `ParameterReference` details).
    pub caused_by: Vec<String>,
}

/// `add` / `modify` / `replace` / `maybe-replace` / `remove` / `import` / `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeAction {
    Add,
    Modify,
    /// `Replacement: "True"`: the resource is deleted and created anew (new physical id).
    Replace,
    /// `Replacement: "Conditional"`: CloudFormation decides at execution time.
    MaybeReplace,
    Remove,
    Import,
    /// An action this version does not know (`Dynamic`, future ones).
    Other,
}

impl ChangeAction {
    /// From the change's `Action` and `Replacement` strings (`Replacement` is absent on Add/Remove).
    pub fn from_api(action: &str, replacement: Option<&str>) -> Self {
        match action {
            "Add" => ChangeAction::Add,
            "Remove" => ChangeAction::Remove,
            "Import" => ChangeAction::Import,
            "Modify" => match replacement {
                Some("True") => ChangeAction::Replace,
                Some("Conditional") => ChangeAction::MaybeReplace,
                _ => ChangeAction::Modify,
            },
            _ => ChangeAction::Other,
        }
    }

    /// The one-character mark `plan` prints in front of the resource.
    pub fn mark(self) -> &'static str {
        match self {
            ChangeAction::Add => "+",
            ChangeAction::Modify => "~",
            ChangeAction::Replace => "!",
            ChangeAction::MaybeReplace => "?",
            ChangeAction::Remove => "-",
            ChangeAction::Import => "<",
            ChangeAction::Other => "*",
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            ChangeAction::Add => "add",
            ChangeAction::Modify => "modify",
            ChangeAction::Replace => "replace",
            ChangeAction::MaybeReplace => "replace (conditional)",
            ChangeAction::Remove => "remove",
            ChangeAction::Import => "import",
            ChangeAction::Other => "change",
        }
    }
}

/// One `Details[]` entry, reduced to what we show.
#[derive(Debug, Clone, Default)]
pub struct Detail {
    /// `Properties`, `Tags`, `Metadata`, ...
    pub attribute: Option<String>,
    /// The property name, when the attribute is `Properties`.
    pub name: Option<String>,
    /// `ParameterReference`, `DirectModification`, `ResourceReference`, ...
    pub change_source: Option<String>,
    pub causing_entity: Option<String>,
}

impl ResourceChange {
    pub fn new(
        action: &str,
        replacement: Option<&str>,
        logical_id: impl Into<String>,
        resource_type: impl Into<String>,
        details: &[Detail],
    ) -> Self {
        let mut targets: Vec<String> = Vec::new();
        let mut caused_by: Vec<String> = Vec::new();
        for d in details {
            let target = match (d.attribute.as_deref(), d.name.as_deref()) {
                (Some(attr), Some(name)) => format!("{attr}.{name}"),
                (Some(attr), None) => attr.to_string(),
                (None, Some(name)) => name.to_string(),
                (None, None) => continue,
            };
            if !targets.contains(&target) {
                targets.push(target);
            }
            // A parameter change shows up twice (a Static and a Dynamic evaluation); name it once.
            if d.change_source.as_deref() == Some("ParameterReference")
                && let Some(entity) = &d.causing_entity
                && !caused_by.contains(entity)
            {
                caused_by.push(entity.clone());
            }
        }
        ResourceChange {
            action: ChangeAction::from_api(action, replacement),
            logical_id: logical_id.into(),
            resource_type: resource_type.into(),
            targets,
            caused_by,
        }
    }
}

/// The parameters whose values differ between a deployed stack and what we would send, sorted.
/// Values are not shown: `ConfigJson` is kilobytes of JSON.
pub fn changed_parameters(
    deployed: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> Vec<String> {
    wanted
        .iter()
        .filter(|(k, v)| deployed.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Recorded `describe-change-set` output (CLI JSON) into our model.
    use super::*;
    use serde_json::Value;

    pub fn changes(json: &str) -> Vec<ResourceChange> {
        let doc: Value = serde_json::from_str(json).expect("fixture JSON");
        doc["Changes"]
            .as_array()
            .expect("Changes")
            .iter()
            .map(|c| {
                let rc = &c["ResourceChange"];
                let s = |k: &str| rc.get(k).and_then(Value::as_str);
                let details: Vec<Detail> = rc
                    .get("Details")
                    .and_then(Value::as_array)
                    .map(|ds| {
                        ds.iter()
                            .map(|d| Detail {
                                attribute: d["Target"]
                                    .get("Attribute")
                                    .and_then(Value::as_str)
                                    .map(str::to_owned),
                                name: d["Target"].get("Name").and_then(Value::as_str).map(str::to_owned),
                                change_source: d
                                    .get("ChangeSource")
                                    .and_then(Value::as_str)
                                    .map(str::to_owned),
                                causing_entity: d
                                    .get("CausingEntity")
                                    .and_then(Value::as_str)
                                    .map(str::to_owned),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ResourceChange::new(
                    s("Action").unwrap_or("Modify"),
                    s("Replacement"),
                    s("LogicalResourceId").expect("LogicalResourceId"),
                    s("ResourceType").expect("ResourceType"),
                    &details,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::changes;
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/aws/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn add_and_remove_have_no_replacement_key() {
        let c = changes(&fixture("cfn-describe-change-set-add-remove.json"));
        let summary: Vec<(ChangeAction, &str)> =
            c.iter().map(|c| (c.action, c.logical_id.as_str())).collect();
        assert_eq!(
            summary,
            vec![
                (ChangeAction::Add, "AutoScalingGroup"),
                (ChangeAction::Add, "LaunchConfig"),
                (ChangeAction::Remove, "MyEC2Instance"),
            ]
        );
    }

    #[test]
    fn replacement_true_is_a_replace_and_names_each_causing_parameter_once() {
        let c = changes(&fixture("cfn-describe-change-set-modify-replacement-true.json"));
        let instance = c
            .iter()
            .find(|c| c.resource_type == "AWS::EC2::Instance")
            .expect("instance change");
        assert_eq!(instance.action, ChangeAction::Replace);
        // Three parameters, each named once although Static and Dynamic details both mention them.
        assert_eq!(instance.caused_by, vec!["KeyPairName", "InstanceType", "Purpose"]);
        assert!(instance.targets.contains(&"Properties.KeyName".to_string()));
        assert!(instance.targets.contains(&"Tags".to_string()));
        // Each target once, although Static and Dynamic details repeat them.
        let mut dedup = instance.targets.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), instance.targets.len());
    }

    #[test]
    fn replacement_false_is_a_modify() {
        let c = changes(&fixture(
            "cfn-describe-change-set-modify-replacement-false-direct.json",
        ));
        assert!(!c.is_empty());
        assert!(c.iter().all(|c| c.action == ChangeAction::Modify), "{c:?}");
        let c = changes(&fixture(
            "cfn-describe-change-set-awscli-example-lambda-modify.json",
        ));
        assert_eq!(c[0].action, ChangeAction::Modify);
        assert_eq!(c[0].targets, vec!["Properties.Timeout".to_string()]);
    }

    #[test]
    fn parameter_changes_pair_static_and_dynamic_details() {
        let c = changes(&fixture(
            "cfn-describe-change-set-modify-parameter-static-dynamic.json",
        ));
        assert!(!c.is_empty());
        for change in &c {
            assert!(!change.caused_by.is_empty(), "{change:?}");
        }
    }

    #[test]
    fn conditional_replacement_has_its_own_word() {
        assert_eq!(
            ChangeAction::from_api("Modify", Some("Conditional")),
            ChangeAction::MaybeReplace
        );
        assert_eq!(ChangeAction::MaybeReplace.word(), "replace (conditional)");
        assert_eq!(ChangeAction::from_api("Dynamic", None), ChangeAction::Other);
    }

    #[test]
    fn changed_parameters_lists_keys_only() {
        let deployed: BTreeMap<String, String> = [("ConfigJson", "{\"a\":1}"), ("DesiredCount", "1")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let wanted: BTreeMap<String, String> =
            [("ConfigJson", "{\"a\":2}"), ("DesiredCount", "1"), ("Image", "x")]
                .map(|(k, v)| (k.into(), v.into()))
                .into();
        assert_eq!(
            changed_parameters(&deployed, &wanted),
            vec!["ConfigJson", "Image"]
        );
    }
}
