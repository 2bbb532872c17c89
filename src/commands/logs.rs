//! `thespctl logs NAME [-f] [--replica N] [-n LINES]`: a local replica's logs.

use std::time::Duration;

use crate::Context;
use crate::cli::{LogsArgs, TargetKind};
use crate::error::{Error, Result, exit};
use crate::target::choose;
use crate::target::local::logs::{self, Follower};
use crate::target::local::{LocalError, LocalTarget};
use crate::ui::local::log_line;

/// How often `-f` looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

pub async fn run(args: &LogsArgs, ctx: &Context) -> Result<u8> {
    // The manifest only matters for its `target:`; a broken or deleted one must not hide the logs.
    let manifest_target = crate::fleet::load_ref(&ctx.global.file)
        .ok()
        .and_then(|f| f.target);
    if choose(ctx.global.target, manifest_target) == TargetKind::Aws {
        return Err(Error::usage(
            "`thespctl logs` shows the logs of local replicas; on AWS each thespian logs to its CloudWatch \
             log group (see `thespctl status --target aws`)",
        ));
    }
    let target = LocalTarget::beside(&ctx.global.file);
    let sources = logs::sources(&target.state(), &args.name, args.replica)?;
    let prefixed = sources.len() > 1;

    let mut followers = Vec::new();
    for source in &sources {
        let offset = match logs::read_lines(&source.path, args.lines) {
            Ok((lines, offset)) => {
                for line in &lines {
                    log_line(&ctx.ui, source, prefixed, line);
                }
                offset
            }
            // Not written yet (a replica being started): follow it from its first line.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source_err) => {
                return Err(LocalError::Io {
                    action: "read the log",
                    path: source.path.clone(),
                    source: source_err,
                }
                .into());
            }
        };
        followers.push((source, Follower::new(source.path.clone(), offset)));
    }
    if !args.follow {
        return Ok(exit::OK);
    }
    loop {
        tokio::select! {
            // Ctrl-C is how `-f` ends: no error message, the conventional 130.
            () = ctx.cancel.cancelled() => return Ok(exit::INTERRUPTED),
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        for (source, follower) in &mut followers {
            for line in follower.poll() {
                log_line(&ctx.ui, source, prefixed, &line);
            }
        }
    }
}
