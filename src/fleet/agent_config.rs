//! The agent's behaviour format (`CONFIG_JSON`): the one contract between thespctl and the agent.
//!
//! thespctl compiles manifests into the agent crate's own model, so the manifest and the agent can never
//! disagree about the format; this module only adds what the fleet needs on top of it.

pub use thespian_agent::config::{Action, CallService, Config, Function, GrpcMethod, Operation, Sleep};

/// What thespctl needs of the agent's config beyond the agent's own API.
pub trait ConfigExt {
    fn set_method(&mut self, method: GrpcMethod, function: Option<Function>);
    /// The JSON key of a method (`grpc_method_a`), for messages.
    fn key(method: GrpcMethod) -> &'static str;
}

impl ConfigExt for Config {
    fn set_method(&mut self, method: GrpcMethod, function: Option<Function>) {
        match method {
            GrpcMethod::A => self.grpc_method_a = function,
            GrpcMethod::B => self.grpc_method_b = function,
            GrpcMethod::C => self.grpc_method_c = function,
        }
    }

    fn key(method: GrpcMethod) -> &'static str {
        match method {
            GrpcMethod::A => "grpc_method_a",
            GrpcMethod::B => "grpc_method_b",
            GrpcMethod::C => "grpc_method_c",
        }
    }
}
