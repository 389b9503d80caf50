//! Native format (todo)
