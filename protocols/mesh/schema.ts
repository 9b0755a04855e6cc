// A small schema checker for messages from the network: every field typed and bounded before use.
// A failed check throws SchemaError naming the field, e.g. `offer.entries[2].count: not an integer`.

export class SchemaError extends Error {
  override name = 'SchemaError'
}

export type Check<T> = (value: unknown, where: string) => T

export function str (maxLength = 4096, pattern?: RegExp): Check<string> {
  return (v, where) => {
    if (typeof v !== 'string') throw new SchemaError(`${where}: expected a string`)
    if (v.length > maxLength) throw new SchemaError(`${where}: longer than ${maxLength} characters`)
    if (pattern !== undefined && !pattern.test(v)) throw new SchemaError(`${where}: '${v.slice(0, 80)}' is malformed`)
    return v
  }
}

export function int (min = 0, max = Number.MAX_SAFE_INTEGER): Check<number> {
  return (v, where) => {
    if (typeof v !== 'number' || !Number.isInteger(v)) throw new SchemaError(`${where}: not an integer`)
    if (v < min || v > max) throw new SchemaError(`${where}: ${v} is outside ${min}..${max}`)
    return v
  }
}

export function num (min = -Number.MAX_VALUE, max = Number.MAX_VALUE): Check<number> {
  return (v, where) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new SchemaError(`${where}: not a finite number`)
    if (v < min || v > max) throw new SchemaError(`${where}: ${v} is outside ${min}..${max}`)
    return v
  }
}

export const bool: Check<boolean> = (v, where) => {
  if (typeof v !== 'boolean') throw new SchemaError(`${where}: expected true or false`)
  return v
}

export function literal<T extends string | number> (value: T): Check<T> {
  return (v, where) => {
    if (v !== value) throw new SchemaError(`${where}: expected ${JSON.stringify(value)}`)
    return value
  }
}

export function oneOf<T extends string> (values: readonly T[]): Check<T> {
  return (v, where) => {
    if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
      throw new SchemaError(`${where}: expected one of ${values.join(', ')}`)
    }
    return v as T
  }
}

export function arr<T> (item: Check<T>, maxItems: number): Check<T[]> {
  return (v, where) => {
    if (!Array.isArray(v)) throw new SchemaError(`${where}: expected a list`)
    if (v.length > maxItems) throw new SchemaError(`${where}: more than ${maxItems} items`)
    return v.map((x, i) => item(x, `${where}[${i}]`))
  }
}

export function record<T> (value: Check<T>, maxKeys: number, key: Check<string> = str(256)): Check<Record<string, T>> {
  return (v, where) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new SchemaError(`${where}: expected an object`)
    const entries = Object.entries(v)
    if (entries.length > maxKeys) throw new SchemaError(`${where}: more than ${maxKeys} keys`)
    const out: Record<string, T> = {}
    // defineProperty, not assignment: a key '__proto__' (JSON.parse makes it an own key) would
    // otherwise set the result's prototype or vanish instead of being kept as data.
    for (const [k, x] of entries) {
      Object.defineProperty(out, key(k, `${where} key`), { value: value(x, `${where}.${k}`), enumerable: true, writable: true, configurable: true })
    }
    return out
  }
}

export function optional<T> (check: Check<T>): Check<T | undefined> & { optional: true } {
  const f = (v: unknown, where: string): T | undefined => v === undefined || v === null ? undefined : check(v, where)
  return Object.assign(f, { optional: true as const })
}

type Shape = Record<string, Check<unknown>>
type Out<S extends Shape> = { [K in keyof S as S[K] extends { optional: true } ? never : K]: S[K] extends Check<infer T> ? T : never } &
{ [K in keyof S as S[K] extends { optional: true } ? K : never]?: S[K] extends Check<infer T> ? Exclude<T, undefined> : never }

/** An object with exactly these fields (unknown fields are ignored, so newer peers can add some). */
export function obj<S extends Shape> (shape: S): Check<Out<S>> {
  return (v, where) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new SchemaError(`${where}: expected an object`)
    const input = v as Record<string, unknown>
    const out: Record<string, unknown> = {}
    for (const [k, check] of Object.entries(shape)) {
      const x = check(input[k], `${where}.${k}`)
      if (x !== undefined) out[k] = x
    }
    return out as Out<S>
  }
}

/** Turns a check into a validator of whole messages named `name`. */
export function validator<T> (name: string, check: Check<T>): (value: unknown) => T {
  return (value) => check(value, name)
}
