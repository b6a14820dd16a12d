-- One line per property of every object that belongs to the data_drip extension, sorted: two
-- catalogs are the same when this output is the same. Used by tests/upgrade.rs to compare an
-- upgraded catalog with a fresh install (pg_dump leaves extension members out).
WITH ext AS (
    SELECT oid, extconfig, extcondition FROM pg_catalog.pg_extension WHERE extname = 'data_drip'
), members AS (
    SELECT d.classid, d.objid
    FROM pg_catalog.pg_depend d, ext
    WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
), rels AS (
    SELECT c.* FROM pg_catalog.pg_class c JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
), procs AS (
    SELECT p.* FROM pg_catalog.pg_proc p JOIN members m ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
)
SELECT line FROM (
    SELECT 'member ' || pg_catalog.pg_describe_object(classid, objid, 0) AS line FROM members
    UNION ALL
    SELECT format('relation %s: kind %s, rls %s/%s, acl %s, options %s, comment %s',
                  r.oid::regclass, r.relkind, r.relrowsecurity, r.relforcerowsecurity, r.relacl,
                  r.reloptions, pg_catalog.obj_description(r.oid, 'pg_class'))
    FROM rels r
    UNION ALL
    SELECT format('column %s.%s #%s: %s, not null %s, default %s, generated %s, identity %s, comment %s',
                  r.oid::regclass, a.attname, a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod),
                  a.attnotnull, pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), a.attgenerated,
                  a.attidentity, pg_catalog.col_description(r.oid, a.attnum))
    FROM rels r
    JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
    WHERE r.relkind IN ('r', 'p', 'v', 'm')
    UNION ALL
    SELECT format('constraint %s on %s: %s', c.conname, r.oid::regclass, pg_catalog.pg_get_constraintdef(c.oid))
    FROM rels r JOIN pg_catalog.pg_constraint c ON c.conrelid = r.oid
    UNION ALL
    SELECT format('index %s: %s', i.indexrelid::regclass, pg_catalog.pg_get_indexdef(i.indexrelid))
    FROM rels r JOIN pg_catalog.pg_index i ON i.indrelid = r.oid
    UNION ALL
    SELECT format('policy %s on %s: %s %s to %s using %s check %s', p.policyname, p.schemaname || '.' || p.tablename,
                  p.permissive, p.cmd, p.roles, p.qual, p.with_check)
    FROM pg_catalog.pg_policies p WHERE p.schemaname = 'drip'
    UNION ALL
    SELECT format('trigger %s on %s: %s', t.tgname, r.oid::regclass, pg_catalog.pg_get_triggerdef(t.oid))
    FROM rels r JOIN pg_catalog.pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT format('view %s: %s', r.oid::regclass, pg_catalog.pg_get_viewdef(r.oid))
    FROM rels r WHERE r.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('sequence %s: %s %s %s %s', r.oid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqcycle)
    FROM rels r JOIN pg_catalog.pg_sequence s ON s.seqrelid = r.oid
    UNION ALL
    SELECT format('function %s: acl %s, comment %s, definition %s',
                  p.oid::regprocedure, p.proacl, pg_catalog.obj_description(p.oid, 'pg_proc'),
                  CASE WHEN p.prokind IN ('f', 'p', 'w') THEN pg_catalog.pg_get_functiondef(p.oid) END)
    FROM procs p
    UNION ALL
    SELECT format('config table %s: %s', c::regclass, coalesce(ext.extcondition[i], ''))
    FROM ext, unnest(ext.extconfig) WITH ORDINALITY AS u(c, i)
    UNION ALL
    SELECT format('schema drip: acl %s, comment %s', n.nspacl, pg_catalog.obj_description(n.oid, 'pg_namespace'))
    FROM pg_catalog.pg_namespace n WHERE n.nspname = 'drip'
) lines
ORDER BY line COLLATE "C";
