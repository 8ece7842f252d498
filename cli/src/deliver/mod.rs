//! Selling and buying over the network: a payment confirmation waited for
//! ([`confirm`]), an order's bundle put together ([`bundle`]) and delivered as one ZIP
//! object behind a presigned URL ([`zipped`]) or served by the seller itself ([`serve`]);
//! and on the buyer's side, a bundle fetched from a URL ([`download`]).

pub mod bundle;
pub mod confirm;
pub mod download;
pub mod serve;
pub mod web;
pub mod zipped;
