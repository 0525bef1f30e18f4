//! todo-free placeholder
