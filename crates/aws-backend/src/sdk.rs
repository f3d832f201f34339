//! The EC2 port over the real AWS SDK.
