//! `thespctl probe`

use crate::Context;
use crate::cli::ProbeArgs;
use crate::error::{Error, Result};

pub async fn run(_args: &ProbeArgs, _ctx: &Context) -> Result<u8> {
    Err(Error::usage("`thespctl probe` is not implemented yet"))
}
