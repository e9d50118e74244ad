export interface TableOptions {
  /** Widest a column may be (by header); longer cells are cut with "…". */
  maxWidth?: Record<string, number>;
}

const cut = (text: string, width: number | undefined) =>
  width !== undefined && [...text].length > width ? `${[...text].slice(0, Math.max(1, width - 1)).join('')}…` : text;

/** A plain text table: a header row, columns two spaces apart, the last column not padded. */
export function formatTable(headers: string[], rows: string[][], options: TableOptions = {}): string {
  const cells = [headers, ...rows.map((row) => headers.map((header, column) => cut((row[column] ?? '').replace(/\s+/g, ' '), options.maxWidth?.[header])))];
  const widths = headers.map((_, column) => Math.max(...cells.map((row) => [...row[column]!].length)));
  return cells
    .map((row) =>
      row
        .map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}
