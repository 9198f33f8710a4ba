/**
 * Deeper JSON is refused before validation: no legitimate event nests this far, and deep values
 * make recursive code (error formatting, serialisation) slow or overflow the stack.
 */
export const MAX_JSON_DEPTH = 64

/** Whether `value` nests objects/arrays deeper than `max` levels; iterative, so depth costs no stack. */
export function nestsDeeperThan(value: unknown, max: number = MAX_JSON_DEPTH): boolean {
  const stack: Array<[unknown, number]> = [[value, 1]]
  while (stack.length > 0) {
    const [current, depth] = stack.pop()!
    if (typeof current !== 'object' || current === null) continue
    if (depth > max) return true
    for (const child of Array.isArray(current) ? current : Object.values(current)) {
      if (typeof child === 'object' && child !== null) stack.push([child, depth + 1])
    }
  }
  return false
}
