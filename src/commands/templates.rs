//! `thespctl templates`

use crate::Context;
use crate::cli::TemplatesArgs;
use crate::error::{Error, Result};

pub async fn run(_args: &TemplatesArgs, _ctx: &Context) -> Result<u8> {
    Err(Error::usage("`thespctl templates` is not implemented yet"))
}
