-- Ready-made backfills (online_migrations' helpers): each registers (or redefines) a backfill
-- named after what it does and starts it; returns the run id. The caller becomes the owner, so
-- the same privileges and checks apply as for drip.register.

-- The backfill name a helper uses: kind, table and column, at most 63 bytes. A longer name is cut
-- on a character boundary and made unique with a hash of the whole name, so two long column
-- names never share a backfill.
CREATE FUNCTION drip._helper_name(kind text, relation regclass, col name) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    full_name text := format('%s:%s.%s', kind, relation, col);
    short text;
BEGIN
    IF octet_length(full_name) <= 63 THEN
        RETURN full_name;
    END IF;
    short := full_name;
    WHILE octet_length(short) > 54 LOOP
        short := left(short, -1);
    END LOOP;
    RETURN short || '~' || left(md5(full_name), 8);
END $$;

-- Helpers' arguments have no meaning as NULL: 22004 naming the argument.
CREATE FUNCTION drip._required(is_null boolean, argument text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF is_null THEN
        RAISE EXCEPTION 'argument "%" must not be NULL', argument
            USING ERRCODE = 'null_value_not_allowed', HINT = format('Pass a value for %s.', argument);
    END IF;
END $$;

-- The single-column primary key of a table, or an error.
CREATE FUNCTION drip._single_pk(rel regclass) RETURNS name
LANGUAGE plpgsql STABLE AS $$
DECLARE
    col name;
BEGIN
    SELECT a.attname INTO col
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = rel AND i.indisprimary AND i.indnatts = 1;
    IF col IS NULL THEN
        RAISE EXCEPTION 'relation % has no single-column primary key', rel
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Use drip.register with an explicit action instead.';
    END IF;
    RETURN col;
END $$;

CREATE FUNCTION drip.backfill_column(relation regclass, column_name name, value text) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n text := drip._helper_name('backfill_column', relation, column_name);
BEGIN
    PERFORM drip._required(relation IS NULL, 'relation');
    PERFORM drip._required(column_name IS NULL, 'column_name');
    PERFORM drip._required(value IS NULL, 'value');
    PERFORM drip.register(n, relation, format('SET %I = %s', column_name, value),
                          scope => format('%I IS NULL', column_name), replace => true,
                          description => format('Set %I to %s where it is NULL', column_name, value));
    RETURN drip.start(n);
END $$;
COMMENT ON FUNCTION drip.backfill_column(regclass, name, text)
    IS 'Set column_name to the SQL expression value in every row where it is NULL; returns the run id.';

CREATE FUNCTION drip.copy_column(relation regclass, from_column name, to_column name) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n text := drip._helper_name('copy_column', relation, to_column);
BEGIN
    PERFORM drip._required(relation IS NULL, 'relation');
    PERFORM drip._required(from_column IS NULL, 'from_column');
    PERFORM drip._required(to_column IS NULL, 'to_column');
    PERFORM drip.register(n, relation, format('SET %I = %I', to_column, from_column),
                          scope => format('%I IS DISTINCT FROM %I', to_column, from_column),
                          replace => true,
                          description => format('Copy %I into %I', from_column, to_column));
    RETURN drip.start(n);
END $$;
COMMENT ON FUNCTION drip.copy_column(regclass, name, name)
    IS 'Copy from_column into to_column wherever they differ; returns the run id.';

CREATE FUNCTION drip.delete_orphans(relation regclass, fk_column name, parent regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n text := drip._helper_name('delete_orphans', relation, fk_column);
    parent_key name;
BEGIN
    PERFORM drip._required(relation IS NULL, 'relation');
    PERFORM drip._required(fk_column IS NULL, 'fk_column');
    PERFORM drip._required(parent IS NULL, 'parent');
    parent_key := drip._single_pk(parent);
    PERFORM drip.register(n, relation, 'DELETE',
                          scope => format('%I IS NOT NULL AND NOT EXISTS (SELECT 1 FROM %s drip_parent WHERE drip_parent.%I = %s.%I)',
                                          fk_column, parent, parent_key, relation, fk_column),
                          replace => true,
                          description => format('Delete rows whose %I has no row in %s', fk_column, parent));
    RETURN drip.start(n);
END $$;
COMMENT ON FUNCTION drip.delete_orphans(regclass, name, regclass)
    IS 'Delete the rows whose fk_column points at no row of parent (by its primary key); returns the run id.';

CREATE FUNCTION drip.reset_counter(relation regclass, counter_column name, child regclass, fk_column name) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n text := drip._helper_name('reset_counter', relation, counter_column);
    key name;
BEGIN
    PERFORM drip._required(relation IS NULL, 'relation');
    PERFORM drip._required(counter_column IS NULL, 'counter_column');
    PERFORM drip._required(child IS NULL, 'child');
    PERFORM drip._required(fk_column IS NULL, 'fk_column');
    key := drip._single_pk(relation);
    PERFORM drip.register(n, relation,
                          format('SET %I = (SELECT count(*) FROM %s drip_child WHERE drip_child.%I = %s.%I)',
                                 counter_column, child, fk_column, relation, key),
                          replace => true,
                          description => format('Recount %I from %s.%I', counter_column, child, fk_column));
    RETURN drip.start(n);
END $$;
COMMENT ON FUNCTION drip.reset_counter(regclass, name, regclass, name)
    IS 'Set counter_column to the number of child rows pointing at each row; returns the run id.';
