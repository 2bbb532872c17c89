//! `thespctl logs`

use crate::Context;
use crate::cli::LogsArgs;
use crate::error::{Error, Result};

pub async fn run(_args: &LogsArgs, _ctx: &Context) -> Result<u8> {
    Err(Error::usage("`thespctl logs` is not implemented yet"))
}
