//! Credit balances in Redis: one hash per key (`g` generation, `r`
//! remaining, `p` refill period), brought up to date, checked and spent by
//! one script, so sidecars sharing the Redis spend one balance exactly and
//! a refill happens once per period, whichever sidecar sees it first.

use std::time::Duration;

use crate::credits::KeyCredits;
use crate::token::KeyId;

use super::Spent;

const PREFIX: &str = "scopegate:credits:";

/// Brings the balance up to date. ARGV: generation, remaining as set,
/// refill amount (-1: none), the period now.
const CURRENT: &str = r"
local g = tonumber(redis.call('HGET', KEYS[1], 'g') or '-1')
if g < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'g', ARGV[1], 'r', ARGV[2], 'p', ARGV[4])
end
if tonumber(ARGV[3]) >= 0 and tonumber(redis.call('HGET', KEYS[1], 'p')) < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'r', ARGV[3], 'p', ARGV[4])
end
local r = tonumber(redis.call('HGET', KEYS[1], 'r'))
";

/// ARGV 5: the cost. Returns {paid (1/0), remaining}.
const SPEND: &str = r"
local cost = tonumber(ARGV[5])
if r < cost then return {0, r} end
return {1, redis.call('HINCRBY', KEYS[1], 'r', -cost)}
";

/// ARGV 5: op, 6: amount, 7: the new generation, 8: the most a balance
/// holds. Returns {before, after}.
const APPLY: &str = r"
local amount = tonumber(ARGV[6])
local after = r
if ARGV[5] == 'set' then after = amount
elseif ARGV[5] == 'increment' then after = math.min(r + amount, tonumber(ARGV[8]))
else after = math.max(r - amount, 0) end
redis.call('HSET', KEYS[1], 'r', after, 'g', ARGV[7])
return {r, after}
";

pub struct SharedBalances {
    client: redis::Client,
    timeout: Duration,
    connection: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
}

impl SharedBalances {
    pub fn new(client: redis::Client, timeout: Duration) -> SharedBalances {
        SharedBalances {
            client,
            timeout,
            connection: tokio::sync::OnceCell::new(),
        }
    }

    async fn connection(&self) -> Result<redis::aio::ConnectionManager, String> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout.max(Duration::from_millis(500)))
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        self.connection
            .get_or_try_init(|| {
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
            .map_err(|error| error.to_string())
    }

    fn script(body: &str, key: KeyId, credits: &KeyCredits, now: i64) -> redis::Cmd {
        let mut command = redis::cmd("EVAL");
        let refill = credits.terms.refill;
        command
            .arg(format!("{CURRENT}{body}"))
            .arg(1)
            .arg(format!("{PREFIX}{key}"))
            .arg(credits.generation)
            .arg(credits.terms.remaining)
            .arg(refill.map_or(-1, |refill| refill.amount as i64))
            .arg(refill.map_or(0, |refill| refill.period(now)));
        command
    }

    pub async fn spend(&self, key: KeyId, credits: &KeyCredits, cost: u64, now: i64) -> Spent {
        let Ok(mut connection) = self.connection().await else {
            return Spent::Away;
        };
        let mut command = Self::script(SPEND, key, credits, now);
        command.arg(cost);
        match tokio::time::timeout(
            self.timeout,
            command.query_async::<(u8, u64)>(&mut connection),
        )
        .await
        {
            Ok(Ok((1, remaining))) => Spent::Paid(remaining),
            Ok(Ok((_, remaining))) => Spent::Short(remaining),
            _ => Spent::Away,
        }
    }

    pub async fn remaining(
        &self,
        key: KeyId,
        credits: &KeyCredits,
        now: i64,
    ) -> Result<u64, String> {
        let mut connection = self.connection().await?;
        let mut command = Self::script(SPEND, key, credits, now);
        command.arg(0);
        let (_, remaining): (u8, u64) = command
            .query_async(&mut connection)
            .await
            .map_err(|error| error.to_string())?;
        Ok(remaining)
    }

    pub async fn apply(
        &self,
        key: KeyId,
        credits: &KeyCredits,
        (op, amount): (&str, u64),
        generation: u64,
        now: i64,
    ) -> Result<(u64, u64), String> {
        let mut connection = self.connection().await?;
        let mut command = Self::script(APPLY, key, credits, now);
        command
            .arg(op)
            .arg(amount)
            .arg(generation)
            .arg(crate::credits::MAX_CREDITS);
        command
            .query_async(&mut connection)
            .await
            .map_err(|error| error.to_string())
    }
}
