//! Positional parameters and how they are bound: sent through the extended
//! protocol, never spliced into the SQL text.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgArguments, PgTypeInfo};
use sqlx::{Arguments, Encode, Postgres, Type};

/// A positional parameter.
#[derive(Debug, Clone)]
pub enum ParamValue {
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// A positional parameter and the type it is declared as, if any.
#[derive(Debug, Clone)]
pub struct Param {
    pub value: ParamValue,
    /// PostgreSQL type name; the value is converted to it on the target.
    pub type_name: Option<String>,
}

impl ParamValue {
    /// The type sqlx sends the value as (see [`bind`](Self::bind)).
    pub fn type_info(&self) -> PgTypeInfo {
        match self {
            ParamValue::Null => UntypedNull::type_info(),
            ParamValue::Bool(_) => <bool as Type<Postgres>>::type_info(),
            ParamValue::Int(_) => <i64 as Type<Postgres>>::type_info(),
            ParamValue::Double(_) => <f64 as Type<Postgres>>::type_info(),
            ParamValue::Text(_) => <String as Type<Postgres>>::type_info(),
            ParamValue::Bytes(_) => <Vec<u8> as Type<Postgres>>::type_info(),
        }
    }

    /// Binds the value with its natural PostgreSQL type (NULL untyped).
    pub fn bind(&self, arguments: &mut PgArguments) -> Result<(), sqlx::Error> {
        match self {
            ParamValue::Null => arguments.add(UntypedNull),
            ParamValue::Bool(value) => arguments.add(*value),
            ParamValue::Int(value) => arguments.add(*value),
            ParamValue::Double(value) => arguments.add(*value),
            ParamValue::Text(value) => arguments.add(value.clone()),
            ParamValue::Bytes(value) => arguments.add(value.clone()),
        }
        .map_err(sqlx::Error::Encode)
    }
}

/// A NULL parameter of no declared type, so PostgreSQL infers it from the
/// statement (`WHERE id = $1` makes it an integer) instead of failing on text.
struct UntypedNull;

impl Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(0))
    }
}

impl Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(&self, _: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Ok(IsNull::Yes)
    }
}
