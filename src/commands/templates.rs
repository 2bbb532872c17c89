//! `thespctl templates show NAME` / `thespctl templates export DIR [--force]`: the embedded CloudFormation
//! templates, for people who deploy them by hand or review what `up` deploys.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Context;
use crate::cli::{TemplatesArgs, TemplatesCommand};
use crate::error::{Error, Result, exit};
use crate::target::aws::templates::{self, Template};
use crate::ui::{Report, Ui};

pub async fn run(args: &TemplatesArgs, ctx: &Context) -> Result<u8> {
    match &args.command {
        TemplatesCommand::Show { name } => {
            ctx.ui.emit(&show(name)?);
        }
        TemplatesCommand::Export { dir, force } => {
            ctx.ui.emit(&export(dir, *force)?);
        }
    }
    Ok(exit::OK)
}

/// One template, printed verbatim (`--output json`: `{"name", "file", "body"}`).
#[derive(Debug, Serialize)]
pub struct Shown {
    pub name: &'static str,
    pub file: &'static str,
    pub body: &'static str,
}

impl Report for Shown {
    fn render(&self, _ui: &Ui) -> String {
        // The UI adds the final newline back: the output is byte for byte the file.
        self.body.strip_suffix('\n').unwrap_or(self.body).to_string()
    }
}

/// What `export` wrote (`--output json`: `{"dir", "files": [{"template", "path", "bytes", "replaced"}]}`).
#[derive(Debug, Serialize)]
pub struct Exported {
    pub dir: PathBuf,
    pub files: Vec<ExportedFile>,
}

#[derive(Debug, Serialize)]
pub struct ExportedFile {
    pub template: &'static str,
    pub path: PathBuf,
    pub bytes: usize,
    /// An existing file was overwritten (only with `--force`).
    pub replaced: bool,
}

impl Report for Exported {
    fn render(&self, _ui: &Ui) -> String {
        self.files
            .iter()
            .map(|f| {
                let verb = if f.replaced { "replaced" } else { "wrote" };
                format!("{verb} {} ({} bytes)", f.path.display(), f.bytes)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub fn show(name: &str) -> Result<Shown> {
    let template = find(name)?;
    Ok(Shown {
        name: template.name,
        file: template.file_name,
        body: template.body,
    })
}

fn find(name: &str) -> Result<Template> {
    templates::find(name).ok_or_else(|| {
        Error::usage(format!(
            "there is no template {name:?}; the templates are: {}",
            templates::names().join(", ")
        ))
    })
}

/// Writes every template into `dir` (created if missing). Without `force`, refuses before writing
/// anything if one of the files exists; each file is written whole or not at all (temporary file, then
/// rename), so an interrupted export never leaves a truncated template.
pub fn export(dir: &Path, force: bool) -> Result<Exported> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::usage(format!(
            "{} exists and is not a directory; give a directory to export the templates into",
            dir.display()
        )));
    }
    let targets: Vec<(Template, PathBuf)> = templates::ALL
        .into_iter()
        .map(|t| (t, dir.join(t.file_name)))
        .collect();

    if let Some((_, path)) = targets.iter().find(|(_, path)| path.is_dir()) {
        return Err(Error::usage(format!(
            "{} is a directory; move it away or export into another directory",
            path.display()
        )));
    }
    let existing: Vec<String> = targets
        .iter()
        .filter(|(_, path)| path.exists())
        .map(|(_, path)| path.display().to_string())
        .collect();
    if !existing.is_empty() && !force {
        return Err(Error::usage(format!(
            "{} already exist{}; nothing was written. Pass --force to overwrite",
            existing.join(" and "),
            if existing.len() == 1 { "s" } else { "" }
        )));
    }

    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        action: "create the directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::with_capacity(targets.len());
    for (template, path) in targets {
        let replaced = path.exists();
        write_whole(&path, template.body)?;
        files.push(ExportedFile {
            template: template.name,
            path,
            bytes: template.body.len(),
            replaced,
        });
    }
    Ok(Exported {
        dir: dir.to_path_buf(),
        files,
    })
}

/// Writes `body` to a temporary file beside `path`, then renames it over `path`.
fn write_whole(path: &Path, body: &str) -> Result<()> {
    let file_name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{file_name}.thespctl-{}.tmp", std::process::id()));
    let written = std::fs::write(&temp, body).and_then(|()| std::fs::rename(&temp, path));
    written.map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        Error::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::OutputFormat;

    #[test]
    fn show_renders_the_body_verbatim_without_the_final_newline() {
        let shown = show("environment").expect("known");
        assert_eq!(
            format!("{}\n", shown.render(&Ui::plain(OutputFormat::Table))),
            shown.body
        );
        assert_eq!(show("ecs_service.yaml").expect("file name").name, "ecs_service");
    }

    #[test]
    fn unknown_template_lists_the_valid_names() {
        let err = show("service").unwrap_err();
        assert_eq!(err.exit_code(), exit::USAGE);
        assert_eq!(
            err.to_string(),
            "there is no template \"service\"; the templates are: environment, ecs_service"
        );
    }
}
