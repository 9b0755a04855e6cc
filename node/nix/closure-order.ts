// The order a closure is imported in: a path only after the paths it references.
import type { PathInfo } from './store-backend.ts'

/** The registrations in an order where every path comes after the paths it references. */
export function referencesFirst (byPath: Map<string, PathInfo>): PathInfo[] {
  const out: PathInfo[] = []
  const state = new Map<string, 'visiting' | 'done'>()
  // Iterative depth-first search: a closure can be deeper than the call stack.
  for (const root of [...byPath.keys()].sort()) {
    if (state.has(root)) continue
    const stack: Array<{ path: string, refs: string[], i: number }> = []
    const push = (p: string): void => {
      state.set(p, 'visiting')
      stack.push({ path: p, refs: (byPath.get(p)?.references ?? []).filter(r => r !== p && byPath.has(r)), i: 0 })
    }
    push(root)
    while (stack.length > 0) {
      const top = stack[stack.length - 1] as { path: string, refs: string[], i: number }
      const ref = top.refs[top.i++]
      if (ref === undefined) {
        stack.pop()
        state.set(top.path, 'done')
        out.push(byPath.get(top.path) as PathInfo)
      } else if (!state.has(ref)) {
        push(ref)
      }
      // A reference cycle (Nix forbids them) would be cut here rather than loop.
    }
  }
  return out
}
