//! `thespctl validate`

use crate::Context;
use crate::cli::ValidateArgs;
use crate::error::{Error, Result};

pub async fn run(_args: &ValidateArgs, _ctx: &Context) -> Result<u8> {
    Err(Error::usage("`thespctl validate` is not implemented yet"))
}
