//! Coin data per algorithm, set by an operator, from which the dashboard estimates revenue per
//! day. The server has no market feed on purpose (a farm box may have no internet, and a price
//! source is a trust decision), so the figures are what the operator enters: the coin's network
//! difficulty, block reward and price, and the pool's fee.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::{Store, StoreError};

/// Settings key prefix; the algorithm follows.
const KEY_PREFIX: &str = "coin.";

/// Expected hashes per unit of network difficulty for Bitcoin-style difficulty (difficulty 1 is
/// the target 0x00000000ffff…, which Litecoin-style scrypt coins share for their network figure).
const HASHES_PER_DIFFICULTY: f64 = 4_294_967_296.0;

/// What an operator enters for one algorithm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CoinData {
    /// Ticker of the coin mined (`BTC`, `LTC`…).
    pub coin: String,
    /// The coin's network difficulty.
    pub network_difficulty: f64,
    /// Coins per block (subsidy plus typical fees).
    pub block_reward: f64,
    /// Price of one coin in `currency`.
    pub price: f64,
    /// Currency of the price (`USD`, `EUR`…).
    pub currency: String,
    /// Pool fee in percent.
    #[serde(default)]
    pub pool_fee_percent: f64,
}

/// Estimated earnings per day.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Revenue {
    /// Coins per day.
    pub coins: f64,
    /// In the price's currency.
    pub money: f64,
}

impl CoinData {
    /// Refuses values that would make the estimate meaningless.
    pub fn validate(&self) -> Result<(), String> {
        let ticker = |name: &str, v: &str, max: usize| {
            if v.is_empty() || v.len() > max || !v.chars().all(|c| c.is_ascii_alphanumeric()) {
                Err(format!("{name} must be 1 to {max} letters or digits"))
            } else {
                Ok(())
            }
        };
        ticker("coin", &self.coin, 16)?;
        ticker("currency", &self.currency, 8)?;
        if !(self.network_difficulty.is_finite() && self.network_difficulty > 0.0) {
            return Err("network_difficulty must be a positive number".into());
        }
        for (name, v) in [("block_reward", self.block_reward), ("price", self.price)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be zero or a positive number"));
            }
        }
        if !(self.pool_fee_percent.is_finite() && (0.0..=100.0).contains(&self.pool_fee_percent)) {
            return Err("pool_fee_percent must be between 0 and 100".into());
        }
        Ok(())
    }

    /// Expected earnings of `hashes_per_second` over a day at this difficulty and reward.
    pub fn revenue_per_day(&self, hashes_per_second: f64) -> Revenue {
        let hps = if hashes_per_second.is_finite() && hashes_per_second > 0.0 {
            hashes_per_second
        } else {
            0.0
        };
        let blocks = hps * 86_400.0 / (self.network_difficulty * HASHES_PER_DIFFICULTY);
        let coins = blocks * self.block_reward * (1.0 - self.pool_fee_percent / 100.0);
        Revenue {
            coins,
            money: coins * self.price,
        }
    }
}

/// An algorithm id as the agents send it: 1 to 32 of `a-z 0-9 - _`.
pub fn valid_algorithm(algorithm: &str) -> bool {
    !algorithm.is_empty()
        && algorithm.len() <= 32
        && algorithm
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Coin data of every algorithm that has some. A stored value that no longer parses is left out
/// with a warning rather than failing the page that asked.
pub async fn load_all(store: &Store) -> Result<Vec<(String, CoinData)>, StoreError> {
    let rows = store.settings_with_prefix(KEY_PREFIX).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(key, value)| {
            let algorithm = key.strip_prefix(KEY_PREFIX)?.to_string();
            if !valid_algorithm(&algorithm) {
                return None;
            }
            match serde_json::from_str::<CoinData>(&value) {
                Ok(c) => Some((algorithm, c)),
                Err(error) => {
                    tracing::warn!(%key, %error, "Ignoring unreadable coin data");
                    None
                }
            }
        })
        .collect())
}

/// Refuses an algorithm id or coin data that [`save`] would not store.
pub fn check(algorithm: &str, data: &CoinData) -> Result<(), String> {
    if !valid_algorithm(algorithm) {
        return Err("algorithm must be 1 to 32 of a-z, 0-9, - and _".into());
    }
    data.validate()
}

/// Stores (replaces) the coin data of `algorithm`, after validating both.
pub async fn save(store: &Store, algorithm: &str, data: &CoinData) -> Result<(), String> {
    check(algorithm, data)?;
    write(store, algorithm, data)
        .await
        .map_err(|e| e.to_string())
}

/// Stores (replaces) the coin data of `algorithm`, already [`check`]ed.
pub async fn write(store: &Store, algorithm: &str, data: &CoinData) -> Result<(), StoreError> {
    let json = serde_json::to_string(data).map_err(|e| StoreError::Invalid(e.to_string()))?;
    store
        .set_setting(&format!("{KEY_PREFIX}{algorithm}"), &json)
        .await
}

/// Removes the coin data of `algorithm`; false when it had none.
pub async fn remove(store: &Store, algorithm: &str) -> Result<bool, StoreError> {
    store
        .delete_setting(&format!("{KEY_PREFIX}{algorithm}"))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_db::test_backends;

    fn btc() -> CoinData {
        CoinData {
            coin: "BTC".into(),
            network_difficulty: 1.0e14,
            block_reward: 3.2,
            price: 90_000.0,
            currency: "USD".into(),
            pool_fee_percent: 2.0,
        }
    }

    #[test]
    fn revenue_follows_hash_rate_difficulty_reward_and_fee() {
        let c = CoinData {
            pool_fee_percent: 0.0,
            ..btc()
        };
        // 1 PH/s for a day: 8.64e19 hashes over 1e14 × 2^32 hashes per block.
        let r = c.revenue_per_day(1e15);
        let blocks = 8.64e19 / (1.0e14 * 4_294_967_296.0);
        assert!((r.coins - blocks * 3.2).abs() < 1e-12, "{r:?}");
        assert!((r.money - blocks * 3.2 * 90_000.0).abs() < 1e-6);
        let with_fee = btc().revenue_per_day(1e15);
        assert!((with_fee.coins - r.coins * 0.98).abs() < 1e-12);
        // Twice the difficulty, half the coins; no hash rate, nothing.
        let harder = CoinData {
            network_difficulty: 2.0e14,
            ..c.clone()
        };
        assert!((harder.revenue_per_day(1e15).coins * 2.0 - r.coins).abs() < 1e-12);
        assert_eq!(c.revenue_per_day(0.0).money, 0.0);
        assert_eq!(c.revenue_per_day(f64::NAN).money, 0.0);
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(btc().validate().is_ok());
        let bad = [
            CoinData {
                coin: "".into(),
                ..btc()
            },
            CoinData {
                coin: "<b>".into(),
                ..btc()
            },
            CoinData {
                currency: "US DOLLAR".into(),
                ..btc()
            },
            CoinData {
                network_difficulty: 0.0,
                ..btc()
            },
            CoinData {
                network_difficulty: f64::INFINITY,
                ..btc()
            },
            CoinData {
                block_reward: -1.0,
                ..btc()
            },
            CoinData {
                price: f64::NAN,
                ..btc()
            },
            CoinData {
                pool_fee_percent: 101.0,
                ..btc()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
        assert!(valid_algorithm("sha256d") && valid_algorithm("x16-r_v2"));
        assert!(!valid_algorithm("") && !valid_algorithm("SHA") && !valid_algorithm("a.b"));
    }

    #[tokio::test]
    async fn stored_per_algorithm() {
        for db in test_backends().await {
            let s = &db.store;
            save(s, "sha256d", &btc()).await.unwrap();
            assert!(save(s, "Bad Algo", &btc()).await.is_err());
            let invalid = CoinData {
                price: -1.0,
                ..btc()
            };
            assert!(save(s, "scrypt", &invalid).await.is_err());
            s.set_setting("coin.scrypt", "not json").await.unwrap();
            assert_eq!(load_all(s).await.unwrap(), [("sha256d".to_string(), btc())]);
            assert!(remove(s, "sha256d").await.unwrap());
            assert!(!remove(s, "sha256d").await.unwrap());
            db.cleanup().await;
        }
    }
}
