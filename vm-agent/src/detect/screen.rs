//! A small terminal screen model: just enough of a VT/xterm emulator to know which character sits in
//! which cell, where the cursor is, which rows wrapped softly and which cells belong to an OSC 8
//! hyperlink. Colours and other attributes are parsed (by `vte`) and dropped: the detector only needs text.

use unicode_width::UnicodeWidthChar;

/// One character cell of the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cell {
    /// The character shown; `' '` for a blank cell, `'\0'` for the right half of a wide character.
    pub(crate) ch: char,
    /// The cell was written while an OSC 8 hyperlink was open (its target is reported separately).
    pub(crate) linked: bool,
}

impl Cell {
    const BLANK: Cell = Cell {
        ch: ' ',
        linked: false,
    };
}

/// One screen row.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) cells: Vec<Cell>,
    /// The cursor ran off the end of this row while printing (a soft wrap): the next row continues it.
    pub(crate) wrapped: bool,
}

impl Row {
    fn new(cols: usize) -> Row {
        Row {
            cells: vec![Cell::BLANK; cols],
            wrapped: false,
        }
    }

    fn clear(&mut self) {
        self.cells.fill(Cell::BLANK);
        self.wrapped = false;
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct SavedCursor {
    row: usize,
    col: usize,
}

/// The screen grid with its cursor, scroll region and alternate buffer.
#[derive(Debug)]
pub(crate) struct Screen {
    pub(crate) cols: usize,
    pub(crate) rows: usize,
    pub(crate) grid: Vec<Row>,
    /// The main screen's rows while the alternate screen is shown.
    saved_main: Option<Vec<Row>>,
    pub(crate) row: usize,
    pub(crate) col: usize,
    /// The cursor sits on the last column after printing there; the next print wraps first.
    pub(crate) wrap_pending: bool,
    autowrap: bool,
    top: usize,
    bottom: usize,
    saved: SavedCursor,
    /// An OSC 8 hyperlink is open: printed cells are marked as linked.
    pub(crate) link_open: bool,
}

impl Screen {
    pub(crate) fn new(cols: u16, rows: u16) -> Screen {
        let cols = usize::from(cols.max(2));
        let rows = usize::from(rows.max(1));
        Screen {
            cols,
            rows,
            grid: (0..rows).map(|_| Row::new(cols)).collect(),
            saved_main: None,
            row: 0,
            col: 0,
            wrap_pending: false,
            autowrap: true,
            top: 0,
            bottom: rows - 1,
            saved: SavedCursor::default(),
            link_open: false,
        }
    }

    /// Changes the size, keeping what fits (like a terminal without reflow).
    pub(crate) fn resize(&mut self, cols: u16, rows: u16) {
        let cols = usize::from(cols.max(2));
        let rows = usize::from(rows.max(1));
        for grid in std::iter::once(&mut self.grid).chain(self.saved_main.as_mut()) {
            grid.resize_with(rows, || Row::new(cols));
            for r in grid.iter_mut() {
                r.cells.resize(cols, Cell::BLANK);
            }
        }
        self.cols = cols;
        self.rows = rows;
        self.top = 0;
        self.bottom = rows - 1;
        self.row = self.row.min(rows - 1);
        self.col = self.col.min(cols - 1);
        self.wrap_pending = false;
    }

    /// Prints one character at the cursor. Returns the number of lines the screen scrolled.
    pub(crate) fn print(&mut self, c: char) -> usize {
        let width = match c.width() {
            Some(0) | None => return 0,
            Some(w) => w.min(2),
        };
        let mut scrolled = 0;
        if self.wrap_pending || self.col + width > self.cols {
            if self.autowrap {
                self.grid[self.row].wrapped = true;
                self.col = 0;
                scrolled += self.line_feed();
            } else {
                self.col = self.cols - width;
            }
            self.wrap_pending = false;
        }
        let linked = self.link_open;
        let row = &mut self.grid[self.row];
        row.cells[self.col] = Cell { ch: c, linked };
        if width == 2 {
            row.cells[self.col + 1] = Cell { ch: '\0', linked };
        }
        if self.col + width >= self.cols {
            self.col = self.cols - 1;
            self.wrap_pending = true;
        } else {
            self.col += width;
        }
        scrolled
    }

    /// Moves down one line, scrolling the region when at its bottom. Returns lines scrolled.
    pub(crate) fn line_feed(&mut self) -> usize {
        self.wrap_pending = false;
        if self.row == self.bottom {
            self.scroll_up(1)
        } else {
            if self.row + 1 < self.rows {
                self.row += 1;
            }
            0
        }
    }

    fn reverse_index(&mut self) {
        self.wrap_pending = false;
        if self.row == self.top {
            self.scroll_down(1);
        } else if self.row > 0 {
            self.row -= 1;
        }
    }

    /// Scrolls the region up by `n` lines; returns `n` when the whole screen scrolled (rows above the
    /// region did not move), 0 when only a partial region moved (then row indices above stay valid).
    fn scroll_up(&mut self, n: usize) -> usize {
        let n = n.min(self.bottom - self.top + 1);
        for _ in 0..n {
            let mut r = self.grid.remove(self.top);
            r.clear();
            self.grid.insert(self.bottom, r);
        }
        if self.top == 0 {
            n
        } else {
            0
        }
    }

    fn scroll_down(&mut self, n: usize) {
        let n = n.min(self.bottom - self.top + 1);
        for _ in 0..n {
            let mut r = self.grid.remove(self.bottom);
            r.clear();
            self.grid.insert(self.top, r);
        }
    }

    pub(crate) fn carriage_return(&mut self) {
        self.col = 0;
        self.wrap_pending = false;
    }

    pub(crate) fn backspace(&mut self) {
        self.wrap_pending = false;
        self.col = self.col.saturating_sub(1);
    }

    pub(crate) fn tab(&mut self) {
        self.wrap_pending = false;
        self.col = ((self.col / 8) + 1) * 8;
        if self.col >= self.cols {
            self.col = self.cols - 1;
        }
    }

    fn goto(&mut self, row: usize, col: usize) {
        self.row = row.min(self.rows - 1);
        self.col = col.min(self.cols - 1);
        self.wrap_pending = false;
    }

    fn erase_cells(&mut self, row: usize, from: usize, to: usize) {
        let r = &mut self.grid[row];
        let to = to.min(self.cols);
        if from < to {
            r.cells[from..to].fill(Cell::BLANK);
        }
    }

    /// Applies a CSI sequence. `params` holds the first value of each parameter (0 when omitted).
    /// Returns the number of lines the whole screen scrolled.
    pub(crate) fn csi(&mut self, params: &[u16], intermediates: &[u8], action: char) -> usize {
        let p = |i: usize| params.get(i).copied().unwrap_or(0);
        let n = |i: usize| usize::from(p(i).max(1));
        let private = intermediates.first().copied();
        match (private, action) {
            (None, 'A') => self.goto(self.row.saturating_sub(n(0)), self.col),
            (None, 'B') | (None, 'e') => self.goto(self.row + n(0), self.col),
            (None, 'C') | (None, 'a') => self.goto(self.row, self.col + n(0)),
            (None, 'D') => self.goto(self.row, self.col.saturating_sub(n(0))),
            (None, 'E') => self.goto(self.row + n(0), 0),
            (None, 'F') => self.goto(self.row.saturating_sub(n(0)), 0),
            (None, 'G') | (None, '`') => self.goto(self.row, n(0) - 1),
            (None, 'd') => self.goto(n(0) - 1, self.col),
            (None, 'H') | (None, 'f') => self.goto(n(0) - 1, n(1) - 1),
            (None, 'J') | (Some(b'?'), 'J') => {
                let row = self.row;
                match p(0) {
                    0 => {
                        self.erase_cells(row, self.col, self.cols);
                        self.grid[row].wrapped = false;
                        for r in row + 1..self.rows {
                            self.grid[r].clear();
                        }
                    }
                    1 => {
                        for r in 0..row {
                            self.grid[r].clear();
                        }
                        self.erase_cells(row, 0, self.col + 1);
                    }
                    _ => self.grid.iter_mut().for_each(Row::clear),
                }
            }
            (None, 'K') | (Some(b'?'), 'K') => {
                let (row, col) = (self.row, self.col);
                match p(0) {
                    0 => {
                        self.erase_cells(row, col, self.cols);
                        self.grid[row].wrapped = false;
                    }
                    1 => self.erase_cells(row, 0, col + 1),
                    _ => {
                        self.grid[row].clear();
                    }
                }
            }
            (None, 'X') => {
                let (row, col) = (self.row, self.col);
                self.erase_cells(row, col, col + n(0));
            }
            (None, 'P') => {
                let (row, col, k) = (self.row, self.col, n(0));
                let cells = &mut self.grid[row].cells;
                let k = k.min(self.cols - col);
                cells[col..].rotate_left(k);
                let len = cells.len();
                cells[len - k..].fill(Cell::BLANK);
            }
            (None, '@') => {
                let (row, col, k) = (self.row, self.col, n(0));
                let cells = &mut self.grid[row].cells;
                let k = k.min(self.cols - col);
                cells[col..].rotate_right(k);
                cells[col..col + k].fill(Cell::BLANK);
            }
            (None, 'L') | (None, 'M') if self.row >= self.top && self.row <= self.bottom => {
                let k = n(0).min(self.bottom - self.row + 1);
                for _ in 0..k {
                    if action == 'L' {
                        let mut r = self.grid.remove(self.bottom);
                        r.clear();
                        self.grid.insert(self.row, r);
                    } else {
                        let mut r = self.grid.remove(self.row);
                        r.clear();
                        self.grid.insert(self.bottom, r);
                    }
                }
                self.col = 0;
                self.wrap_pending = false;
            }
            (None, 'S') => return self.scroll_up(n(0)),
            (None, 'T') => self.scroll_down(n(0)),
            (None, 'r') => {
                let top = n(0) - 1;
                let bottom = if p(1) == 0 {
                    self.rows
                } else {
                    usize::from(p(1))
                }
                .min(self.rows)
                    - 1;
                if top < bottom {
                    self.top = top;
                    self.bottom = bottom;
                    self.goto(0, 0);
                }
            }
            (None, 's') if params.is_empty() || p(0) == 0 => self.save_cursor(),
            (None, 'u') if params.is_empty() => self.restore_cursor(),
            (Some(b'?'), 'h') | (Some(b'?'), 'l') => {
                let set = action == 'h';
                for &mode in params {
                    match mode {
                        7 => self.autowrap = set,
                        47 | 1047 | 1049 => self.alternate_screen(set, mode == 1049),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        0
    }

    pub(crate) fn esc(&mut self, intermediates: &[u8], byte: u8) -> usize {
        if !intermediates.is_empty() {
            return 0;
        }
        match byte {
            b'7' => self.save_cursor(),
            b'8' => self.restore_cursor(),
            b'D' => return self.line_feed(),
            b'E' => {
                self.carriage_return();
                return self.line_feed();
            }
            b'M' => self.reverse_index(),
            b'c' => {
                let (cols, rows) = (self.cols as u16, self.rows as u16);
                *self = Screen::new(cols, rows);
            }
            _ => {}
        }
        0
    }

    fn save_cursor(&mut self) {
        self.saved = SavedCursor {
            row: self.row,
            col: self.col,
        };
    }

    fn restore_cursor(&mut self) {
        let s = self.saved;
        self.goto(s.row, s.col);
    }

    fn alternate_screen(&mut self, on: bool, save_cursor: bool) {
        match (on, self.saved_main.is_some()) {
            (true, false) => {
                if save_cursor {
                    self.save_cursor();
                }
                let fresh = (0..self.rows).map(|_| Row::new(self.cols)).collect();
                self.saved_main = Some(std::mem::replace(&mut self.grid, fresh));
            }
            (false, true) => {
                if let Some(main) = self.saved_main.take() {
                    self.grid = main;
                }
                if save_cursor {
                    self.restore_cursor();
                }
            }
            _ => {}
        }
    }
}
