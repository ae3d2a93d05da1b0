//! The Docker backend: runs each task in a hardened container through the Docker Engine API.
//!
//! **Status: not yet implemented.** This crate is a placeholder in the workspace so the crate map is
//! complete; the backend arrives with the Docker issue. Until then, use the Direct backend
//! (`oz-backend-direct`). The crate deliberately exports nothing, so no caller can mistake it for a
//! working backend.
//!
//! ```
//! // Nothing to call yet; see oz_backend_direct::DirectBackend.
//! ```
