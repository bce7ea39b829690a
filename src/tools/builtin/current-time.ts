/**
 * The time now in an IANA time zone, as ISO 8601 with that zone's offset
 * (`2025-03-30T14:05:00+02:00`). An unknown zone is a RangeError naming it.
 */
export function currentTime (timeZone: string, now: Date): { iso: string; timeZone: string } {
  let format: Intl.DateTimeFormat
  try {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      timeZoneName: 'longOffset'
    })
  } catch {
    throw new RangeError(`unknown time zone "${timeZone}" (use an IANA name such as Europe/Paris or UTC)`)
  }
  const parts = Object.fromEntries(format.formatToParts(now).map((part) => [part.type, part.value]))
  // "GMT+02:00", or "GMT" itself for a zero offset.
  const offset = parts.timeZoneName === 'GMT' ? '+00:00' : parts.timeZoneName!.slice(3)
  const iso = `${parts.year}-${parts.month}-${parts.day}T${parts.hour}:${parts.minute}:${parts.second}${offset}`
  return { iso, timeZone: format.resolvedOptions().timeZone }
}
