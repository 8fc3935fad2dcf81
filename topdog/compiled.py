"""Statements built once, then run again with new values: the hot path of a transition.

Django compiles a queryset to SQL every time it is evaluated. On the endpoints an IDE
calls in a loop, that compilation costs more than the database: a locked three-table read
of a workflow took 1.6 ms through the ORM and 0.65 ms through its compiled SQL, the
six-column status read 0.9 ms against 0.12 ms (PostgreSQL 15, see bench/).

- `CompiledQuery` is an ordinary queryset, built from placeholder values. It is compiled
  on first use (per database vendor) and its SQL is then run with the real values, so the
  SQL always follows the models and the lookups stay written in the ORM.
- `models_write` inserts model instances (and updates them, guarded on the values their
  rows must still hold) with statements built once per model, values prepared by the
  model's fields, a whole batch as one statement on PostgreSQL.

Use them where a measured path needs them; everywhere else the ORM reads better."""

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import psycopg
from django.core.exceptions import EmptyResultSet, FullResultSet, ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Expression, Field, Model, QuerySet
from django.db.models.constants import OnConflict
from django.db.models.query import get_related_populators
from django.db.models.sql.compiler import SQLCompiler


@dataclass(frozen=True)
class Param:
    """A named value of a compiled query: the field it is compared with, and a placeholder
    value no real call uses (valid for the field, distinct from the other placeholders and
    from the query's constants)."""

    field: Field
    placeholder: Any


class CompiledQuery:
    """`build(**placeholders)` compiled once; `sql_params(**values)` for each run."""

    def __init__(self, build: Callable[..., QuerySet], **params: Param) -> None:
        self.build = build
        self.params = params
        self._by_vendor: dict[str, _Compiled] = {}

    def sql_params(self, **values: Any) -> tuple[str, list[Any]]:
        """The SQL and its parameters for `values` (one per Param, prepared like Django)."""
        return self._sql_params(_db(), values)

    def _sql_params(self, db: BaseDatabaseWrapper, values: dict[str, Any]) -> tuple[str, list]:
        compiled = self._compiled(db)
        prepared = {
            name: param.field.get_db_prep_value(values[name], db, prepared=False)
            for name, param in self.params.items()
        }
        return compiled.sql, [prepared[p] if isinstance(p, str) else p[0] for p in compiled.order]

    def fetchone(self, **values: Any) -> tuple | None:
        """The first row, its values converted as the ORM's values_list() converts them."""
        db = _db()
        sql, params = self._sql_params(db, values)
        with db.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        return None if row is None else _converted(row, self._compiled(db).converters, db)

    def instances(self, **values: Any) -> list[Model]:
        """The rows as model instances (annotations become attributes)."""
        return CompiledQuery.instances_together((self, values))[0]

    @staticmethod
    def instances_together(*runs: "tuple[CompiledQuery, dict[str, Any]]") -> list[list[Model]]:
        """Each (query, values) run's instances; on PostgreSQL all in one round trip."""
        db = _db()
        cursors = _execute_all(db, [query._sql_params(db, values) for query, values in runs])
        results = []
        for (query, _), cursor in zip(runs, cursors, strict=True):
            with cursor:
                rows = cursor.fetchall()
                results.append(query._compiled(db).hydration.instances(db, rows))
        return results

    def _compiled(self, db: BaseDatabaseWrapper) -> "_Compiled":
        compiled = self._by_vendor.get(db.vendor)
        if compiled is None:
            compiled = self._by_vendor[db.vendor] = self._compile(db)
        return compiled

    def _compile(self, db: BaseDatabaseWrapper) -> "_Compiled":
        queryset = self.build(**{name: param.placeholder for name, param in self.params.items()})
        compiler = queryset.query.get_compiler(connection=db)
        try:
            sql, values = compiler.as_sql()
        except (EmptyResultSet, FullResultSet) as exc:  # e.g. a negative PositiveIntegerField
            raise ImproperlyConfigured(
                "CompiledQuery placeholders must be values their fields accept"
            ) from exc
        names = {
            param.field.get_db_prep_value(param.placeholder, db, prepared=False): name
            for name, param in self.params.items()
        }
        if len(names) != len(self.params):
            raise ImproperlyConfigured("CompiledQuery placeholders must differ from each other")
        order = tuple(_lookup(names, value) for value in values)
        if sorted(p for p in order if isinstance(p, str)) != sorted(self.params):
            raise ImproperlyConfigured(
                f"CompiledQuery: each of {sorted(self.params)} must appear once in {sql!r}"
            )
        return _Compiled(sql, order, compiler, db.alias)


class _Compiled:
    """A queryset's SQL on one database vendor: per SQL parameter a param name or a
    constant in a 1-tuple, and from the compiler that built it, how its rows are read."""

    def __init__(
        self, sql: str, order: tuple[str | tuple[Any], ...], compiler: SQLCompiler, alias: str
    ) -> None:
        self.sql, self.order, self.compiler, self.alias = sql, order, compiler, alias

    @cached_property
    def converters(self) -> list:
        """(position, (converters, expression)) of the columns the database answers in a
        form Django converts (SQLite's 0/1 booleans, say)."""
        columns = [column[0] for column in self.compiler.select]
        return list(self.compiler.get_converters(columns).items())

    @cached_property
    def hydration(self) -> "_Hydration":
        return _Hydration(self.compiler, self.converters, self.alias)


class _Hydration:
    """Rows into model instances as Django's ModelIterable makes them (select_related
    objects and annotations included), planned once from the compiler that built the SQL.
    Converters run with the connection of the thread reading the rows."""

    def __init__(self, compiler: SQLCompiler, converters: list, alias: str) -> None:
        select, klass_info = compiler.select, compiler.klass_info
        if klass_info is None or not compiler.query.default_cols:  # values(), values_list()
            raise ImproperlyConfigured("CompiledQuery.instances needs a queryset of models")
        self.model = klass_info["model"]
        positions = klass_info["select_fields"]
        self.start, self.end = positions[0], positions[-1] + 1
        self.init_list = [column[0].target.attname for column in select[self.start : self.end]]
        self.related = get_related_populators(klass_info, select, alias)
        self.annotations = list(compiler.annotation_col_map.items())
        self.converters = converters

    def instances(self, db: BaseDatabaseWrapper, rows: list[tuple]) -> list[Model]:
        found = []
        for row in rows:
            row = _converted(row, self.converters, db)
            instance = self.model.from_db(db.alias, self.init_list, row[self.start : self.end])
            for populator in self.related:
                populator.populate(row, instance)
            for name, position in self.annotations:
                setattr(instance, name, row[position])
            found.append(instance)
        return found


def _converted(row: tuple, converters: list, db: BaseDatabaseWrapper) -> tuple:
    """`row` with Django's converters applied to the columns that have them."""
    if not converters:
        return row
    values = list(row)
    for position, (functions, expression) in converters:
        for convert in functions:
            values[position] = convert(values[position], expression, db)
    return tuple(values)


def _execute_all(db: BaseDatabaseWrapper, statements: list[tuple[str, list[Any]]]) -> list[Any]:
    """Run (sql, params) statements in order; one open cursor each, to be read and closed
    by the caller. On PostgreSQL several go in one round trip (a psycopg pipeline)."""
    cursors: list[Any] = []
    try:
        if db.vendor == "postgresql" and len(statements) > 1:
            db.ensure_connection()
            # Errors surface when the pipeline syncs, outside Django's cursor wrapper.
            with db.wrap_database_errors, db.connection.pipeline():
                for sql, params in statements:
                    cursors.append(db.cursor())
                    cursors[-1].execute(sql, params)
        else:
            for sql, params in statements:
                cursors.append(db.cursor())
                cursors[-1].execute(sql, params)
    except BaseException:
        # An open cursor would keep SQLite from rolling back to the caller's savepoint.
        for cursor in cursors:
            cursor.close()
        raise
    return cursors


def _raw_cursor(db: BaseDatabaseWrapper) -> Any:
    """A cursor of `db` (PostgreSQL) that sends SQL written with $1, $2... as it is, wrapped
    as Django's own cursors are (database errors, execute wrappers)."""
    db.close_if_health_check_failed()
    db.ensure_connection()
    db.validate_thread_sharing()
    with db.wrap_database_errors:
        return db.make_cursor(psycopg.RawCursor(db.connection))


def _db() -> BaseDatabaseWrapper:
    """The default database's connection of this thread. Looked up once per call: every
    attribute read through `django.db.connection` repeats the per-thread lookup."""
    return connections[DEFAULT_DB_ALIAS]


def _lookup(names: dict[Any, str], value: Any) -> str | tuple[Any]:
    """The param name whose placeholder `value` is, or `value` as a constant."""
    try:
        return names.get(value, (value,))
    except TypeError:  # unhashable: a constant (a list of an __in lookup, say)
        return (value,)


class NextPk(Expression):
    """The next primary key of `model`, taken from its sequence now (PostgreSQL), so that
    a row inserted later in the transaction can carry it and rows written in the same
    batch can refer to it. NULL on databases without sequences: insert the row first
    there, as usual. An id reserved by a transaction that then inserts nothing is skipped,
    as ids of rolled-back inserts are."""

    def __init__(self, model: type[Model]) -> None:
        super().__init__(output_field=model._meta.pk)
        self.model = model

    def as_sql(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> tuple[str, list]:
        return "NULL", []

    def as_postgresql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper
    ) -> tuple[str, list]:
        meta = self.model._meta
        return "nextval(pg_get_serial_sequence(%s, %s))", [
            connection.ops.quote_name(meta.db_table),
            meta.pk.column,
        ]


@dataclass(frozen=True)
class Upsert:
    """A row for `models_write` that, when a row exists under `unique_fields`, updates
    that row's `update_fields` from `obj` instead (as `bulk_create(update_conflicts=True)`)."""

    obj: Model
    unique_fields: tuple[str, ...]
    update_fields: tuple[str, ...]


@dataclass(frozen=True)
class Update:
    """A row for `models_write`: UPDATE `obj`'s `fields` (as `save(update_fields=...)`
    would) where its primary key matches and its row still holds the `where` values;
    when no row matches, `models_write` raises UpdateMissed."""

    obj: Model
    fields: tuple[str, ...]
    where: Mapping[str, Any]


class UpdateMissed(Exception):
    """An `Update` matched no row: the row is gone or no longer holds its `where` values."""

    def __init__(self, update: Update) -> None:
        super().__init__(
            f"{type(update.obj).__name__} {update.obj.pk}: no row matched "
            f"{dict(update.where) or 'the primary key'}"
        )
        self.update = update


# (kind, model, vendor, *shape) -> (sql, the fields whose values it takes, in order)
_STATEMENTS: dict[tuple, tuple[str, list[Field]]] = {}


def model_insert(obj: Model) -> None:
    """INSERT `obj` as `obj.save(force_insert=True)` would, minus the queryset machinery."""
    models_write([obj])


def models_write(rows: list[Model | Upsert | Update]) -> None:
    """Write `rows` in order: a model instance is INSERTed as `save(force_insert=True)`
    would (with the primary key it carries, or one the database gives it), an Upsert or
    an Update as it says. A guarded Update that misses raises UpdateMissed once all of
    them ran: call this inside `transaction.atomic()`, which then rolls the batch back
    whole.

    For the rows written on every transition, where Django's machinery cost more than
    the database: each statement is built once per model from its fields, and values are
    prepared by the fields themselves (`pre_save`, then `get_db_prep_save`), as Django's
    own save does. No signals are sent. On PostgreSQL the whole batch is one statement
    (each row a data-modifying WITH query; foreign keys are checked at commit), since
    every statement costs the client more than the rows it carries.
    """
    db = _db()
    statements = [_statement(db, row) for row in rows]
    if db.vendor == "postgresql" and len(rows) > 1:
        sql, raw_sql = _batch_sql(tuple(key for key, _, _ in statements))
        # The $n form needs server-side binding (DB_SERVER_SIDE_BINDING, off behind
        # PgBouncer), and Django's query log (DEBUG, counted queries) shows %s only.
        if db.features.uses_server_side_binding and not db.queries_logged:
            cursor, sql = _raw_cursor(db), raw_sql
        else:
            cursor = db.cursor()
        with cursor:
            cursor.execute(sql, [value for _, _, values in statements for value in values])
            results = cursor.fetchone()
    else:
        results = []
        for _, sql, values in statements:
            with db.cursor() as cursor:
                cursor.execute(sql, values)
                results.append(_result(db, cursor, rows[len(results)]))
    missed = None
    for row, result in zip(rows, results, strict=True):
        if isinstance(row, Update):
            if result != 1 and missed is None:
                missed = row
        else:
            _inserted(db, _instance(row), result)
    if missed is not None:
        raise UpdateMissed(missed)


def _result(db: BaseDatabaseWrapper, cursor: Any, row: Model | Upsert | Update) -> Any:
    """What one statement answers: the rows an Update matched, an insert's new pk."""
    if isinstance(row, Update):
        return cursor.rowcount
    meta = _instance(row)._meta
    if meta.auto_field is None:
        return None
    if db.features.can_return_columns_from_insert:
        return cursor.fetchone()[0]
    return db.ops.last_insert_id(cursor, meta.db_table, meta.pk.column)


# statement keys -> the batch's one statement, with %s and with $n placeholders
_BATCHES: dict[tuple, tuple[str, str]] = {}
# The statements are built from quoted names and placeholders only: no literal holds "%s".
_PLACEHOLDER = re.compile(r"%s")


def _batch_sql(keys: tuple) -> tuple[str, str]:
    """Statements as one (PostgreSQL): each a WITH query answering one column, the main
    query one row of their answers: an Update's matched rows, an insert's new pk.

    Also written with PostgreSQL's own placeholders ($1, $2...), for a raw cursor: psycopg
    caches its translation of %s only for statements of up to 50 parameters, and a
    transition's batch has more, so it would parse the batch again on every run."""
    batch = _BATCHES.get(keys)
    if batch is None:
        queries, answers = [], []
        for n, key in enumerate(keys):
            statement, _ = _STATEMENTS[key]
            kind, model = key[:2]
            if kind == "insert" and model._meta.auto_field is not None:  # RETURNING its pk
                queries.append(f"s{n} AS ({statement})")
                answers.append(f"(SELECT * FROM s{n})")
            else:
                queries.append(f"s{n} AS ({statement} RETURNING 1)")
                answers.append(f"(SELECT count(*) FROM s{n})")
        sql = f"WITH {', '.join(queries)} SELECT {', '.join(answers)}"
        numbers = itertools.count(1)
        raw_sql = _PLACEHOLDER.sub(lambda _: f"${next(numbers)}", sql)
        batch = _BATCHES[keys] = (sql, raw_sql)
    return batch


def _statement(db: BaseDatabaseWrapper, row: Model | Upsert | Update) -> tuple[tuple, str, list]:
    """The row's statement: its key in _STATEMENTS, its SQL and its values."""
    if isinstance(row, Update):
        return _update_statement(db, row)
    obj = _instance(row)
    unique_fields, update_fields = (
        (row.unique_fields, row.update_fields) if isinstance(row, Upsert) else ((), ())
    )
    with_pk = obj.pk is not None
    key = ("insert", type(obj), db.vendor, unique_fields, update_fields, with_pk)
    built = _STATEMENTS.get(key)
    if built is None:
        built = _STATEMENTS[key] = _insert_sql(db, type(obj), unique_fields, update_fields, with_pk)
    sql, fields = built
    return key, sql, [f.get_db_prep_save(f.pre_save(obj, True), db) for f in fields]


def _update_statement(db: BaseDatabaseWrapper, row: Update) -> tuple[tuple, str, list[Any]]:
    obj, where = row.obj, tuple(row.where)
    key = ("update", type(obj), db.vendor, row.fields, where)
    built = _STATEMENTS.get(key)
    if built is None:
        built = _STATEMENTS[key] = _update_sql(db, type(obj), row.fields, where)
    sql, fields = built
    meta = obj._meta
    values = []
    for f in fields[: len(row.fields)]:
        value = f.pre_save(obj, False)
        if hasattr(value, "resolve_expression"):
            raise ValueError(f"Update writes values, not expressions ({f.name}={value!r})")
        values.append(f.get_db_prep_save(value, db))
    values.append(meta.pk.get_db_prep_value(obj.pk, db, prepared=False))
    values.extend(
        f.get_db_prep_value(row.where[name], db, prepared=False)
        for f, name in zip(fields[len(row.fields) :], where, strict=True)
    )
    return key, sql, values


def _instance(row: Model | Upsert | Update) -> Model:
    return row if isinstance(row, Model) else row.obj


def _inserted(db: BaseDatabaseWrapper, obj: Model, pk: Any) -> None:
    if obj._meta.auto_field is not None:
        setattr(obj, obj._meta.auto_field.attname, pk)
    obj._state.adding = False
    obj._state.db = db.alias


def _insert_sql(
    db: BaseDatabaseWrapper,
    model: type[Model],
    unique_fields: tuple[str, ...],
    update_fields: tuple[str, ...],
    with_pk: bool,
) -> tuple[str, list[Field]]:
    meta = model._meta
    fields = [f for f in meta.local_concrete_fields if with_pk or f is not meta.auto_field]
    quote = db.ops.quote_name
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        quote(meta.db_table),
        ", ".join(quote(f.column) for f in fields),
        ", ".join(["%s"] * len(fields)),
    )
    if unique_fields:
        sql += " " + db.ops.on_conflict_suffix_sql(
            fields,
            OnConflict.UPDATE,
            [meta.get_field(name).column for name in update_fields],
            [meta.get_field(name).column for name in unique_fields],
        )
    if meta.auto_field is not None and db.features.can_return_columns_from_insert:
        sql += f" RETURNING {quote(meta.auto_field.column)}"
    return sql, fields


def _update_sql(
    db: BaseDatabaseWrapper, model: type[Model], names: tuple[str, ...], where: tuple[str, ...]
) -> tuple[str, list[Field]]:
    """UPDATE of `names` guarded on the pk and `where`; its fields: the written, then `where`."""
    meta = model._meta
    written = [meta.get_field(name) for name in names]
    guards = [meta.get_field(name) for name in where]
    quote = db.ops.quote_name
    sql = "UPDATE {} SET {} WHERE {}".format(
        quote(meta.db_table),
        ", ".join(f"{quote(f.column)} = %s" for f in written),
        " AND ".join(f"{quote(f.column)} = %s" for f in [meta.pk, *guards]),
    )
    return sql, [*written, *guards]
