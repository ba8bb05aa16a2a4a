//! Certificate material: reading it, decoding it, and the validation gate it must pass before a
//! new generation is made of it. Knows nothing of how files change or of listeners.

pub mod inspect;
pub mod kubeconfig;
pub mod pem;
pub(crate) mod read;
pub mod validate;

#[cfg(test)]
mod tests;
