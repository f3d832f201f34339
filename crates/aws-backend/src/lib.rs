//! The AWS EC2 backend: turns a compute grant into an EC2 instance and back into nothing.
//!
//! The logic is written against the [`port::Ec2Port`] trait; the `sdk` feature adds the adapter
//! over the real AWS SDK. The simulator (`sim-ec2`) implements the same port.

pub mod port;
