//! Arguments bound to PostgreSQL statements.

use postgres::types::ToSql;

use crate::store::sql::Arg;

/// The arguments of `Conditions`, as the driver binds them.
pub(super) fn params(args: &[Arg]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| match a {
            Arg::Text(t) => t as &(dyn ToSql + Sync),
            Arg::Int(i) => i as &(dyn ToSql + Sync),
        })
        .collect()
}
