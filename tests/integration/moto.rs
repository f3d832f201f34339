//! The conformance suite and a full lifecycle against moto's EC2 server over HTTP.
